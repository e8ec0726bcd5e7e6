{#- Undo base, keeping the vmail account and all mail data. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-base-journald-config-file-absent:
  file.absent:
    - name: {{ chatmail.lookup.paths.journald_dropin }}

chatmail-base-unbound-config-file-absent:
  file.absent:
    - name: /etc/unbound/unbound.conf.d/chatmail.conf
