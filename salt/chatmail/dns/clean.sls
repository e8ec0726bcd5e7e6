{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-dns-clean-zone-files-absent:
  file.absent:
    - names:
{%- for domain in chatmail.domain_list %}
      - {{ chatmail.lookup.paths.zone_dir }}/{{ domain }}.zone
{%- else %}
      - {{ chatmail.lookup.paths.zone_dir }}/.none
{%- endfor %}
