{#- coturn restarts when its settings, the secrets or the certificates
    change (a renewal restarts it through the tls component's hooks). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/turn/map.jinja" import secrets with context %}

include:
  - .package
  - .config
  - {{ tplroot }}.tls

chatmail-turn-service-running:
  service.running:
    - name: coturn
    - enable: true
    - watch:
      - file: chatmail-turn-config-file-managed
      - file: chatmail-turn-prepare-file-managed
      - file: chatmail-turn-dropin-file-managed
      - pkg: chatmail-turn-pkgs-installed
      - sls: {{ tplroot }}.tls
{%- for domain in secrets | sort %}
{%-   if chatmail.domains[domain].turn_secret %}
      - file: chatmail-chatmaild-turn-secret-{{ domain }}-file-managed
{%-   else %}
      - cmd: chatmail-chatmaild-turn-secret-{{ domain }}-generated
{%-   endif %}
{%- endfor %}
    - require:
      - module: chatmail-turn-dropin-daemon-reloaded
