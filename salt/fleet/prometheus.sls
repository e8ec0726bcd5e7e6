{#- The fleet's Prometheus, on the host the operator names (pillar
    fleet:prometheus:enabled on that minion; the master can run it too when
    it is also a minion).  Scrape targets come from the salt mine: every relay
    publishes chatmail_metrics.targets (pillar/fleet/mine.sls), and each
    highstate of this host rewrites the file_sd files that Prometheus
    watches, so a relay added to the pillar is scraped after its own first
    highstate and mine update and the next one here.  Relays that listen on
    loopback only are left out (nothing could reach them) unless they are
    this host.  See docs/fleet-operations.md. #}
{%- import_yaml "fleet/defaults.yaml" as defaults %}
{%- set prom = salt["chatmail_config.prometheus_settings"](
      defaults.fleet.prometheus, salt["pillar.get"]("fleet:prometheus", {})) %}
{%- set host = '[' ~ prom.listen_address ~ ']' if ':' in prom.listen_address else prom.listen_address %}
{%- set kinds = ["node", "postfix", "mtail", "dovecot"] %}
{%- set groups = {} %}
{%- for kind in kinds %}{% do groups.update({kind: []}) %}{% endfor %}
{%- set published = salt["mine.get"](prom.targets, "chatmail_metrics.targets") or {} %}
{%- set relays = {} %}
{%- do relays.update(published) %}
{%- do relays.update(prom.static_relays) %}
{%- for relay, exporters in relays | dictsort %}
{%-   if exporters is mapping %}
{%-     for kind, target in exporters | dictsort if kind in kinds %}
{%-       set local = target.startswith("127.") or target.startswith("[::1]") or target.startswith("localhost") %}
{%-       if not local or relay == grains.id %}
{%-         set group = dict(targets=[target], labels=dict(relay=relay)) %}
{%-         do groups[kind].append(group) %}
{%-       endif %}
{%-     endfor %}
{%-   endif %}
{%- endfor %}

{%- if prom.enabled %}

{#- written before the package, so Prometheus never starts on every address #}
chatmail-fleet-prometheus-default-file-managed:
  file.managed:
    - name: /etc/default/prometheus
    - mode: "0644"
    - contents: |
        # Managed by Salt (fleet.prometheus)
        ARGS="--web.listen-address={{ host }}:{{ prom.port }} --storage.tsdb.retention.time={{ prom.retention }}"

chatmail-fleet-prometheus-config-file-managed:
  file.managed:
    - name: /etc/prometheus/prometheus.yml
    - source: salt://fleet/files/prometheus.yml.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    - context:
        prom: {{ prom | json }}
        self_target: {{ (host ~ ':' ~ prom.port) | json }}
        kinds: {{ kinds | json }}

chatmail-fleet-prometheus-pkgs-installed:
  pkg.installed:
    - pkgs: {{ prom.pkgs | json }}
    - install_recommends: false
    - require:
      - file: chatmail-fleet-prometheus-default-file-managed
      - file: chatmail-fleet-prometheus-config-file-managed

{#- promtool refuses a broken rules file before it replaces the old one #}
chatmail-fleet-prometheus-rules-file-managed:
  file.managed:
    - name: /etc/prometheus/chatmail-rules.yml
    - source: salt://fleet/files/chatmail-rules.yml
    - mode: "0644"
    - check_cmd: /usr/bin/promtool check rules
    - require:
      - pkg: chatmail-fleet-prometheus-pkgs-installed

chatmail-fleet-prometheus-targets-directory:
  file.directory:
    - name: /etc/prometheus/chatmail-targets
    - mode: "0755"
    - require:
      - pkg: chatmail-fleet-prometheus-pkgs-installed
{%- for kind in kinds %}

chatmail-fleet-prometheus-{{ kind }}-targets-file-managed:
  file.serialize:
    - name: /etc/prometheus/chatmail-targets/{{ kind }}.json
    - serializer: json
    - mode: "0644"
    - dataset: {{ groups[kind] | json }}
    - require:
      - file: chatmail-fleet-prometheus-targets-directory
{%- endfor %}

{#- cmd.run: no Salt state validates a Prometheus configuration (promtool). #}
chatmail-fleet-prometheus-config-checked:
  cmd.run:
    - name: /usr/bin/promtool check config /etc/prometheus/prometheus.yml
    - onchanges:
      - file: chatmail-fleet-prometheus-config-file-managed
      - file: chatmail-fleet-prometheus-rules-file-managed
    - require:
      - pkg: chatmail-fleet-prometheus-pkgs-installed

chatmail-fleet-prometheus-service-running:
  service.running:
    - name: prometheus
    - enable: true
    - reload: true
    - watch:
      - file: chatmail-fleet-prometheus-config-file-managed
      - file: chatmail-fleet-prometheus-rules-file-managed
      - cmd: chatmail-fleet-prometheus-config-checked
      - pkg: chatmail-fleet-prometheus-pkgs-installed

{#- ARGS (address, retention) are read at start only #}
chatmail-fleet-prometheus-restarted:
  module.run:
    - service.restart:
      - name: prometheus
    - onchanges:
      - file: chatmail-fleet-prometheus-default-file-managed
    - require:
      - service: chatmail-fleet-prometheus-service-running
{%- else %}

chatmail-fleet-prometheus-service-dead:
  service.dead:
    - name: prometheus
    - enable: false
{%- endif %}
