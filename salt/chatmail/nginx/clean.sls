{#- Remove the chatmail vhosts and web roots and bring back Debian's default
    site; nginx keeps running. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-nginx-clean-files-absent:
  file.absent:
    - names:
      - /etc/nginx/conf.d/chatmail.conf
      - /etc/nginx/modules-enabled/99-chatmail-stream.conf
{%- for domain in chatmail.domain_list %}
      - /etc/nginx/sites-enabled/chatmail-{{ domain }}.conf
      - {{ chatmail.lookup.paths.www_root }}/{{ domain }}
{%- endfor %}

chatmail-nginx-clean-default-site-symlink:
  file.symlink:
    - name: /etc/nginx/sites-enabled/default
    - target: /etc/nginx/sites-available/default
    - onlyif: test -e /etc/nginx/sites-available/default

chatmail-nginx-clean-service-reloaded:
  module.run:
    - service.reload:
      - name: nginx
    - onlyif: systemctl is-active --quiet nginx
    - onchanges:
      - file: chatmail-nginx-clean-files-absent
      - file: chatmail-nginx-clean-default-site-symlink
