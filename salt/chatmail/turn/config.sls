{#- coturn's settings (no secret in them), the script that adds the TURN
    secrets and the certificate when coturn starts, and the unit drop-in. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/turn/map.jinja" import turn_conf, prepare, dropin, secrets with context %}
{%- set primary = chatmail.domains[chatmail.primary] %}

include:
  - {{ tplroot }}.base.config
  - {{ tplroot }}.chatmaild.config

chatmail-turn-config-file-managed:
  file.managed:
    - name: {{ turn_conf }}
    - source: salt://{{ tpldir }}/files/turnserver.conf.jinja
    - template: jinja
    - user: root
    - group: root
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        denied: {{ salt['chatmail_config.coturn_ranges'](chatmail.turn.denied_peers) | json }}
        allowed: {{ salt['chatmail_config.coturn_ranges'](chatmail.turn.allowed_peers) | json }}
    - require:
      - file: chatmail-base-config-directory

chatmail-turn-prepare-file-managed:
  file.managed:
    - name: {{ prepare }}
    - source: salt://{{ tpldir }}/files/coturn-prepare.jinja
    - template: jinja
    - makedirs: true
    - mode: "0755"
    - context:
        turn_conf: {{ turn_conf }}
        secrets: {{ secrets.values() | sort | json }}
        cert: {{ primary.tls.cert }}
        key: {{ primary.tls.key }}

chatmail-turn-dropin-file-managed:
  file.managed:
    - name: {{ dropin }}
    - source: salt://{{ tpldir }}/files/coturn.service.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        prepare: {{ prepare }}

chatmail-turn-dropin-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-turn-dropin-file-managed
