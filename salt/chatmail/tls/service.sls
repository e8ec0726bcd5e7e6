{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}

include:
  - .config
{%- set ca_domains = [] %}
{%- for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'ca' %}
{%-   do ca_domains.append(domain) %}
{%- endfor %}
{%- if ca_domains %}

{#- A (re)issued certificate: the TLS users reload (not yet installed on the
    first run: nothing to reload then). #}
chatmail-tls-ca-reload-cmd-run:
  cmd.run:
    - name: >-
        for svc in postfix dovecot nginx; do
        systemctl try-reload-or-restart "$svc" 2>/dev/null || true; done
    - onchanges:
{%-   for domain in ca_domains %}
      - x509: chatmail-tls-{{ domain }}-ca-certificate-managed
      - x509: chatmail-tls-{{ domain }}-ca-private-key-managed
{%-   endfor %}
{%- endif %}
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
