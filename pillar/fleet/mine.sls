{#- What every relay publishes to the master (salt-run chatmail_fleet.*):
    DKIM public keys, zone fragments, the DNS check and the relay status
    per domain (chatmail_status.report: units, certificates, queue,
    accounts, disk), and the relay's metrics exporters for the fleet's
    Prometheus (chatmail_metrics.targets, salt/fleet/prometheus.sls). #}
{%- import_yaml "settings.yaml" as settings %}
mine_interval: {{ settings.mine.interval | int }}
mine_functions:
  chatmail_dkim.list_keys: []
  chatmail_dns.zone_fragments: []
  chatmail_dns.status: []
  chatmail_status.report: []
  chatmail_metrics.targets: []
