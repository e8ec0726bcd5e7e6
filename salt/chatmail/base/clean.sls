{#- Undo base, keeping the vmail account, its directories and all mail data. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-base-resolv-conf-restore-cmd-run:
  cmd.run:
    - name: cat /etc/resolv.conf.chatmail-saved > /etc/resolv.conf && rm /etc/resolv.conf.chatmail-saved
    - onlyif: test -e /etc/resolv.conf.chatmail-saved

chatmail-base-journald-config-file-absent:
  file.absent:
    - name: {{ chatmail.lookup.paths.journald_dropin }}

chatmail-base-journald-service-restarted:
  cmd.run:
    - name: systemctl restart systemd-journald
    - onchanges:
      - file: chatmail-base-journald-config-file-absent

chatmail-base-unbound-config-file-absent:
  file.absent:
    - name: /etc/unbound/unbound.conf.d/chatmail.conf

chatmail-base-unbound-service-restarted:
  cmd.run:
    - name: systemctl try-restart unbound
    - onchanges:
      - file: chatmail-base-unbound-config-file-absent
