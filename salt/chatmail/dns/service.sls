{#- Live check of each domain's records against its authoritative servers;
    chatmail:dns:check decides whether problems only warn or fail the run. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config
{%- if chatmail.dns.check != 'off' %}
{%-   for domain in chatmail.domain_list if not chatmail.domains[domain].is_ip %}
{%-     set d = chatmail.domains[domain] %}

chatmail-dns-{{ domain }}-records-checked:
  chatmail_dns.records_checked:
    - name: {{ domain }}
    - on_failure: {{ chatmail.dns.check }}
    - nameservers: {{ chatmail.dns.nameservers | json }}
    - ipv4: {{ d.dns.ipv4 | json }}
    - ipv6: {{ d.dns.ipv6 | json }}
    - selector: {{ d.dkim.selector }}
    - keydir: {{ chatmail.lookup.paths.dkim_dir }}
    - tlsrpt: {{ d.dns.tlsrpt | json }}
    - caa: {{ (d.dns.caa and d.tls.mode == 'acme') | json }}
    - max_age: {{ d.mta_sts.max_age }}
    - require:
      - chatmail_dns: chatmail-dns-{{ domain }}-zone-fragment-managed
{%-   endfor %}
{%- endif %}
