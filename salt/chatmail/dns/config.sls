{#- Zone-file fragment per domain (what the operator publishes in DNS).
    IP-address domains have no DNS. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set dkim_dir = chatmail.lookup.paths.dkim_dir %}

include:
  - {{ tplroot }}.opendkim.config

{%- for domain in chatmail.domain_list if not chatmail.domains[domain].is_ip %}
{%-   set d = chatmail.domains[domain] %}

chatmail-dns-{{ domain }}-zone-fragment-managed:
  chatmail_dns.zone_fragment_managed:
    - name: {{ chatmail.lookup.paths.zone_dir }}/{{ domain }}.zone
    - domain: {{ domain }}
    - ipv4: {{ d.dns.ipv4 | json }}
    - ipv6: {{ d.dns.ipv6 | json }}
    - selector: {{ d.dkim.selector }}
    - keydir: {{ dkim_dir }}
    - tlsrpt: {{ d.dns.tlsrpt | json }}
    - caa: {{ (d.dns.caa and d.tls.mode == 'acme') | json }}
    - max_age: {{ d.mta_sts.max_age }}
    - require:
      - sls: {{ tplroot }}.opendkim.config
{%- endfor %}

{#- A domain removed from the pillar loses its zone fragment on the next run:
    only *.zone files of domains no longer listed are removed. #}
{%- set zones = [] %}
{%- for domain in chatmail.domain_list %}
{%-   do zones.append(domain ~ '.zone') %}
{%- endfor %}

chatmail-dns-stale-zone-fragments-pruned:
  chatmail_files.pruned:
    - name: {{ chatmail.lookup.paths.zone_dir }}
    - match: '*.zone'
    - keep: {{ zones | json }}
