{#- Daemons restart when the ini, their unit or the installed package changes;
    postfix and dovecot are not touched by a chatmaild change. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units, timers with context %}
{%- set secrets = salt['chatmail_config.turn_secret_files'](chatmail) %}

include:
  - .package
  - .config
  # filtermail's units get postfix's group postdrop (its reinject sockets)
  - {{ tplroot }}.postfix.package

chatmail-chatmaild-daemon-reload-cmd-run:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
{%- for name in units.keys() | list + timers.keys() | list %}
      - file: chatmail-chatmaild-{{ name }}-unit-file-managed
{%- endfor %}
{%- for name in timers %}
      - file: chatmail-chatmaild-{{ name }}-timer-file-managed
{%- endfor %}
      - file: chatmail-chatmaild-fcgiwrap-dropin-file-managed

{%- for name in units %}

chatmail-chatmaild-{{ name }}-service-running:
  service.running:
    - name: {{ name }}
    - enable: true
    - watch:
      - file: chatmail-chatmaild-config-file-managed
      - file: chatmail-chatmaild-{{ name }}-unit-file-managed
      - cmd: chatmail-chatmaild-pip-cmd-run
{%-   if name == 'chatmail-metadata' %}
{%-     for domain in secrets | sort %}
      - file: chatmail-chatmaild-turn-secret-{{ domain }}-file-managed
{%-     endfor %}
{%-   endif %}
    - require:
      - cmd: chatmail-chatmaild-daemon-reload-cmd-run
      - file: chatmail-base-mailboxes-directory
      - file: chatmail-base-state-directory
      - pkg: chatmail-postfix-package-pkg-installed
{%- endfor %}

{%- for name in timers %}

chatmail-chatmaild-{{ name }}-timer-running:
  service.running:
    - name: {{ name }}.timer
    - enable: true
    - watch:
      - file: chatmail-chatmaild-{{ name }}-timer-file-managed
    - require:
      - cmd: chatmail-chatmaild-daemon-reload-cmd-run
      - cmd: chatmail-chatmaild-pip-cmd-run
{%- endfor %}

chatmail-chatmaild-fcgiwrap-socket-running:
  service.running:
    - name: fcgiwrap.socket
    - enable: true
    - require:
      - pkg: chatmail-chatmaild-pkgs-installed

{#- fcgiwrap.service is started by its socket; a running one picks up the
    group of its drop-in only when restarted. #}
chatmail-chatmaild-fcgiwrap-restart-cmd-run:
  cmd.run:
    - name: systemctl try-restart fcgiwrap.service
    - onchanges:
      - file: chatmail-chatmaild-fcgiwrap-dropin-file-managed
    - require:
      - cmd: chatmail-chatmaild-daemon-reload-cmd-run
