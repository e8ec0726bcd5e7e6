{#- Stops watching external certificates and drops the acme renewal; the
    certificates and keys themselves stay (they are data). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-tls-external-path-service-dead:
  service.dead:
    - name: chatmail-tls-reload.path
    - enable: false

chatmail-tls-clean-files-absent:
  file.absent:
    - names:
      - {{ chatmail.lookup.paths.systemd_dir }}/chatmail-tls-reload.path
      - {{ chatmail.lookup.paths.systemd_dir }}/chatmail-tls-reload.service
      - /etc/acme/hooks/chatmail-reload
    - require:
      - service: chatmail-tls-external-path-service-dead
