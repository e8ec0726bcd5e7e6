{#- Stop the bot and remove its unit, venv and script.  Its state
    (/var/lib/echobot: the Delta Chat account with its keys), the passwords
    and the accounts stay: switched on again, the bot is the same contact.
    An account nobody logs in to expires like any other. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/echobot/map.jinja" import echobot_dir, unit_file with context %}

chatmail-echobot-service-dead:
  service.dead:
    - name: chatmail-echobot
    - enable: false

chatmail-echobot-clean-files-absent:
  file.absent:
    - names:
      - {{ unit_file }}
      - {{ echobot_dir }}
    - require:
      - service: chatmail-echobot-service-dead

chatmail-echobot-clean-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-echobot-clean-files-absent
