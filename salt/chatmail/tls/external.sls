{#- tls mode external: the operator's certificate files, watched by a
    systemd path unit that reloads the services when they change (included
    by config.sls when a domain uses the mode). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}

chatmail-tls-external-path-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/chatmail-tls-reload.path
    - source: salt://{{ tpldir }}/files/chatmail-tls-reload.path.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}

chatmail-tls-external-service-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/chatmail-tls-reload.service
    - source: salt://{{ tpldir }}/files/chatmail-tls-reload.service
    - mode: "0644"
