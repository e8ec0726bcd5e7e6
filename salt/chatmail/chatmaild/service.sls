{#- Daemons restart when the ini, their unit or the installed package changes;
    postfix and dovecot are not touched by a chatmaild change. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units, timers with context %}

include:
  - .package
  - .config

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

{%- for name in units %}

chatmail-chatmaild-{{ name }}-service-running:
  service.running:
    - name: {{ name }}
    - enable: true
    - watch:
      - file: chatmail-chatmaild-config-file-managed
      - file: chatmail-chatmaild-{{ name }}-unit-file-managed
      - cmd: chatmail-chatmaild-pip-cmd-run
    - require:
      - cmd: chatmail-chatmaild-daemon-reload-cmd-run
      - file: chatmail-base-mailboxes-directory
      - file: chatmail-base-state-directory
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
