{#- The text file directory, mtail's program and unit, the timers that feed
    the node exporter, and what the relay publishes in the mine. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/metrics/map.jinja" import targets, metrics_dir, config_dir, systemd_dir, timers with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units as chatmaild_units with context %}

include:
  - {{ tplroot }}.base.config
  - {{ tplroot }}.chatmaild.service
  - .package

{#- written by the daemons (vmail), fsreport and the status timer (root);
    read by the node exporter (prometheus) and nginx (the public subset).
    It must exist when a daemon starts: systemd leaves a missing
    ReadWritePaths entry read-only for the life of the process, so the
    daemons start after it and restart once when it is created. #}
chatmail-metrics-directory:
  file.directory:
    - name: {{ metrics_dir }}
    - user: {{ chatmail.lookup.users.vmail }}
    - group: root
    - mode: "0755"
    - require:
      - user: chatmail-base-vmail-user-present
    - watch_in:
{%- for name in chatmaild_units %}
      - service: chatmail-chatmaild-{{ name }}-service-running
{%- endfor %}

chatmail-metrics-public-directory:
  file.directory:
    - name: {{ metrics_dir }}/public
    - user: {{ chatmail.lookup.users.vmail }}
    - group: root
    - mode: "0755"
    - require:
      - file: chatmail-metrics-directory

chatmail-metrics-mtail-program-file-managed:
  file.managed:
    - name: {{ config_dir }}/mtail/postfix.mtail
    - source: salt://{{ tpldir }}/files/postfix.mtail
    - makedirs: true
    - mode: "0644"
    - require:
      - file: chatmail-base-config-directory

chatmail-metrics-mtail-unit-file-managed:
  file.managed:
    - name: {{ systemd_dir }}/chatmail-mtail.service
    - source: salt://{{ tpldir }}/files/chatmail-mtail.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        address: {{ chatmail.metrics.listen_address | json }}
        port: {{ chatmail.metrics.ports.mtail }}
        progs: {{ (config_dir ~ "/mtail") | json }}

{%- for name, unit in timers.items() %}

chatmail-metrics-{{ name }}-unit-file-managed:
  file.managed:
    - name: {{ systemd_dir }}/{{ name }}.service
    - source: salt://{{ tpldir }}/files/oneshot.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        unit: {{ unit | json }}

chatmail-metrics-{{ name }}-timer-file-managed:
  file.managed:
    - name: {{ systemd_dir }}/{{ name }}.timer
    - source: salt://{{ tpldir }}/files/interval.timer.jinja
    - template: jinja
    - mode: "0644"
    - context:
        unit: {{ unit | json }}
{%- endfor %}

{#- read by the mine (chatmail_metrics.targets) for the fleet's Prometheus #}
chatmail-metrics-targets-file-managed:
  file.serialize:
    - name: {{ config_dir }}/metrics-targets.json
    - serializer: json
    - mode: "0644"
    - dataset: {{ targets | json }}
    - require:
      - file: chatmail-base-config-directory

{#- the DNS check's arguments per domain, so the status timer needs no pillar #}
{%- set dns_domains = {} %}
{%- for domain in chatmail.domain_list if not chatmail.domains[domain].is_ip %}
{%-   do dns_domains.update({domain: salt["chatmail_dns.domain_args"](
          domain, keydir=chatmail.lookup.paths.dkim_dir)}) %}
{%- endfor %}

chatmail-metrics-status-args-file-managed:
  file.serialize:
    - name: {{ config_dir }}/metrics-status.json
    - serializer: json
    - mode: "0644"
    - dataset:
        nameservers: {{ chatmail.dns.nameservers | json }}
        domains: {{ dns_domains | json }}
    - require:
      - file: chatmail-base-config-directory
