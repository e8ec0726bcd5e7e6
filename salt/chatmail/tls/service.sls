{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}

include:
  - .config
{%- if 'acme' in modes %}

{#- Needs nginx serving the http-01 challenge; failures (no network, DNS not
    yet pointing here) do not fail the highstate: the daily cron retries. #}
chatmail-tls-acme-reconcile-cmd-run:
  cmd.run:
    - name: acmetool --batch reconcile || true
    - onchanges:
      - file: chatmail-tls-acme-target-file-managed
{%-   for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'acme' %}
      - file: chatmail-tls-{{ domain }}-acme-desired-file-managed
{%-   endfor %}
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
