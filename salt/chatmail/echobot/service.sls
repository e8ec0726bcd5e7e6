{#- The bot restarts when its unit, its script, its venv, a password or
    an account changed. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/echobot/map.jinja" import accounts with context %}

include:
  - .package
  - .config

chatmail-echobot-service-running:
  service.running:
    - name: chatmail-echobot
    - enable: true
    - watch:
      - file: chatmail-echobot-unit-file-managed
      - file: chatmail-echobot-script-file-managed
      - chatmail_venv: chatmail-echobot-venv-requirements
{%- for domain in accounts | sort %}
      - cmd: chatmail-echobot-password-{{ domain }}-generated
      - cmd: chatmail-echobot-account-{{ domain }}-present
{%- endfor %}
    - require:
      - module: chatmail-echobot-daemon-reloaded
      - user: chatmail-echobot-user-present
