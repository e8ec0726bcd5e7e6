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

{#- A domain removed from the pillar loses its zone fragment on the next run.
    Only *.zone files of domains no longer listed are removed; with nothing
    stale no state is rendered, so a repeat run reports no changes. #}
{%- set zone_dir = chatmail.lookup.paths.zone_dir %}
{%- if salt['file.directory_exists'](zone_dir) %}
{%-   for entry in salt['file.readdir'](zone_dir) | sort
        if entry.endswith('.zone') and entry[:-5] not in chatmail.domain_list %}

chatmail-dns-{{ entry[:-5] }}-stale-zone-fragment-absent:
  file.absent:
    - name: {{ zone_dir }}/{{ entry }}
{%-   endfor %}
{%- endif %}
