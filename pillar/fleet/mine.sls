{#- What every relay publishes to the master (salt-run chatmail_fleet.*):
    DKIM public keys, zone fragments, the DNS check and a status summary. #}
{%- import_yaml "settings.yaml" as settings %}
mine_interval: {{ settings.mine.interval | int }}
mine_functions:
  chatmail_dkim.list_keys: []
  chatmail_dns.zone_fragments: []
  chatmail_dns.status: []
  chatmail_fleet_status:
    - mine_function: cmd.script
    - salt://fleet/files/fleet_status.py
