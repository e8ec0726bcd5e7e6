{#- Extra trusted CAs (chatmail:trusted_cas) in the system trust store. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set trust_dir = '/usr/local/share/ca-certificates' %}
{%- set trusted = [] %}
{%- for pem in chatmail.trusted_cas %}
{%-   do trusted.append(trust_dir ~ '/chatmail-' ~ loop.index ~ '.crt') %}

chatmail-tls-trusted-ca-{{ loop.index }}-file-managed:
  file.managed:
    - name: {{ trusted[-1] }}
    - contents: {{ pem | yaml_encode }}
    - makedirs: true
    - user: root
    - group: root
    - mode: "0644"
{%- endfor %}

chatmail-tls-trusted-ca-stale-files-pruned:
  chatmail_files.pruned:
    - name: {{ trust_dir }}
    - match: 'chatmail-*.crt'
    - kind: file
    - keep: {{ trusted | map('regex_replace', '^.*/', '') | list | json }}

{#- Rebuilds /etc/ssl/certs (hash links read by postfix's smtp_tls_CApath,
    ca-certificates.crt read by Python and most other clients).  cmd.run:
    Salt has no state for the system trust store. #}
chatmail-tls-trusted-cas-update-cmd-run:
  cmd.run:
    - name: update-ca-certificates
    - onchanges:
      - chatmail_files: chatmail-tls-trusted-ca-stale-files-pruned
{%- for path in trusted %}
      - file: chatmail-tls-trusted-ca-{{ loop.index }}-file-managed
{%- endfor %}
