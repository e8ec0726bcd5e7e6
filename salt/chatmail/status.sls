{#- Health check of the relay, run on demand (not part of the highstate):
      salt-call state.apply chatmail.status
    Fails naming the domain and the problem: a chatmail unit not active, a
    certificate expiring within days_left days, the mailbox filesystem fuller
    than max_disk_percent.  Changes nothing.  Thresholds from the pillar
    chatmail:status (defaults.yaml); chatmail.ini from chatmail_config.lookup
    (the state's default).  Reads the raw pillar, not map.jinja: the check
    also runs on a relay whose pillar is gone or was never there. #}
{%- import_yaml "chatmail/defaults.yaml" as defaults %}
{%- set status = defaults.chatmail.status %}
chatmail-status-healthy:
  chatmail_status.healthy:
    - days_left: {{ salt['pillar.get']('chatmail:status:days_left', status.days_left) | int }}
    - max_disk_percent: {{ salt['pillar.get']('chatmail:status:max_disk_percent', status.max_disk_percent) | int }}
