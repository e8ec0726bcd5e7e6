{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

chatmail-nginx-config-test-cmd-run:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: chatmail-nginx-default-site-file-absent
{%- for domain in chatmail.domain_list %}
      - file: chatmail-nginx-{{ domain }}-vhost-file-managed
{%- endfor %}

chatmail-nginx-service-running:
  service.running:
    - name: nginx
    - enable: true
    - reload: true
    - require:
      - cmd: chatmail-nginx-config-test-cmd-run
    - watch:
      - file: chatmail-nginx-default-site-file-absent
{%- for domain in chatmail.domain_list %}
      - file: chatmail-nginx-{{ domain }}-vhost-file-managed
{%- endfor %}
{%- set acme = [] %}
{%- for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'acme' %}
{%-   do acme.append(domain) %}
{%- endfor %}
{%- if acme %}

{#- acmetool answers the http-01 challenge through nginx, so it runs once
    nginx is up.  Failures (no network, DNS not yet pointing here) do not
    fail the highstate: Debian's acmetool.timer retries twice a day; the
    https vhost appears with the next highstate after the first issuance. #}
chatmail-nginx-acme-reconcile-cmd-run:
  cmd.run:
    - name: acmetool --batch reconcile || true
    - onchanges:
      - file: chatmail-tls-acme-target-file-managed
{%-   for domain in acme %}
      - file: chatmail-tls-{{ domain }}-acme-desired-file-managed
{%-   endfor %}
    - require:
      - service: chatmail-nginx-service-running
{%- endif %}
