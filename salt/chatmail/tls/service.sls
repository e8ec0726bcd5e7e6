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

{#- A certificate (re)issued by the pillar CA: the services that serve it
    reload, which keeps their connections (also when only chatmail.tls is
    applied).  A service not running yet (the first run installs it later)
    has nothing to reload.  ACME certificates reload through acmetool's hook,
    self-signed ones are made once, before the services start. #}
{%-   for unit in ['postfix@-', 'dovecot', 'nginx'] %}

chatmail-tls-{{ unit.rstrip('@-') }}-reloaded:
  module.run:
    - service.reload:
      - name: {{ unit }}
    - onlyif: systemctl is-active --quiet {{ unit }}
    - onchanges:
{%-     for domain in ca_domains %}
      - x509: chatmail-tls-{{ domain }}-ca-certificate-managed
      - x509: chatmail-tls-{{ domain }}-ca-private-key-managed
{%-     endfor %}
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

chatmail-tls-external-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
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
      - module: chatmail-tls-external-daemon-reloaded
{%- endif %}
