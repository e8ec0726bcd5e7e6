{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

{#- cmd.run: no Salt state validates an nginx configuration; a failing
    "nginx -t" keeps the running nginx from reloading into it. #}
chatmail-nginx-config-test-cmd-run:
  cmd.run:
    - name: nginx -t -q
    - onchanges:
      - file: chatmail-nginx-http-conf-file-managed
      - file: chatmail-nginx-default-site-file-absent
      - file: chatmail-nginx-stream-conf-file-managed
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
      - file: chatmail-nginx-http-conf-file-managed
      - file: chatmail-nginx-default-site-file-absent
      - file: chatmail-nginx-stream-conf-file-managed
{%- for domain in chatmail.domain_list %}
      - file: chatmail-nginx-{{ domain }}-vhost-file-managed
{%- endfor %}
