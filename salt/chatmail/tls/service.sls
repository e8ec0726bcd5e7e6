{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}

include:
  - .config
{%- if 'acme' in modes %}

chatmail-tls-acme-timer-running:
  service.running:
    - name: acmetool.timer
    - enable: true
    - require:
      - pkg: chatmail-tls-acme-pkgs-installed
{%- endif %}
{%- if 'external' in modes %}

chatmail-tls-external-daemon-reload-cmd-run:
  cmd.run:
    - name: systemctl daemon-reload
    - onchanges:
      - file: chatmail-tls-external-path-unit-file-managed
      - file: chatmail-tls-external-service-unit-file-managed

chatmail-tls-external-path-service-running:
  service.running:
    - name: chatmail-tls-reload.path
    - enable: true
    - watch:
      - file: chatmail-tls-external-path-unit-file-managed
    - require:
      - cmd: chatmail-tls-external-daemon-reload-cmd-run
{%- endif %}
