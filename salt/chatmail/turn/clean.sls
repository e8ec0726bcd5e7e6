{#- Stop coturn and remove what chatmail.turn wrote (Debian's package stays
    installed, switched off); the generated secrets go with chatmaild's
    stale-secret cleanup. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/turn/map.jinja" import turn_conf, prepare, dropin with context %}

chatmail-turn-service-dead:
  service.dead:
    - name: coturn
    - enable: false

chatmail-turn-clean-files-absent:
  file.absent:
    - names:
      - {{ dropin }}
      - {{ prepare }}
      - {{ turn_conf }}
    - require:
      - service: chatmail-turn-service-dead

chatmail-turn-clean-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-turn-clean-files-absent
