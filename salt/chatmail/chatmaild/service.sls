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

chatmail-chatmaild-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
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
      - chatmail_venv: chatmail-chatmaild-venv-installed
{%-   if name == 'chatmail-metadata' %}
{%-     for domain in secrets | sort %}
{%-       if chatmail.domains[domain].turn_secret %}
      - file: chatmail-chatmaild-turn-secret-{{ domain }}-file-managed
{%-       else %}
      - cmd: chatmail-chatmaild-turn-secret-{{ domain }}-generated
{%-       endif %}
{%-     endfor %}
{%-   endif %}
    - require:
      - module: chatmail-chatmaild-daemon-reloaded
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
      - module: chatmail-chatmaild-daemon-reloaded
      - chatmail_venv: chatmail-chatmaild-venv-installed
{%- endfor %}

chatmail-chatmaild-fcgiwrap-socket-running:
  service.running:
    - name: fcgiwrap.socket
    - enable: true
    - require:
      - pkg: chatmail-chatmaild-pkgs-installed

{#- fcgiwrap.service is started by its socket; a running one picks up the
    group of its drop-in only when restarted (one not running: nothing to do). #}
chatmail-chatmaild-fcgiwrap-restarted:
  module.run:
    - service.restart:
      - name: fcgiwrap.service
    - onlyif: systemctl is-active --quiet fcgiwrap.service
    - onchanges:
      - file: chatmail-chatmaild-fcgiwrap-dropin-file-managed
    - require:
      - module: chatmail-chatmaild-daemon-reloaded
