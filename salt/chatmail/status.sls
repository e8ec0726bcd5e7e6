{#- Health check of the relay, run on demand (not part of the highstate):
      salt-call state.apply chatmail.status
    Fails naming the domain and the problem: a chatmail unit not active, a
    certificate expiring within days_left days, the mailbox filesystem fuller
    than max_disk_percent.  Changes nothing.  Thresholds from the pillar:
    chatmail:status:days_left (14), chatmail:status:max_disk_percent (90). #}
chatmail-status-healthy:
  chatmail_status.healthy:
    - days_left: {{ salt['pillar.get']('chatmail:status:days_left', 14) | int }}
    - max_disk_percent: {{ salt['pillar.get']('chatmail:status:max_disk_percent', 90) | int }}
    - ini: {{ salt['pillar.get']('chatmail:lookup:paths:ini', '/etc/chatmail/chatmail.ini') }}
