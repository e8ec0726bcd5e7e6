{#- Undo base, keeping the vmail account, its directories and all mail data. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

{#- cmd.run: written in place (see service.sls, resolv.conf may be a bind mount). #}
chatmail-base-clean-resolv-conf-cmd-run:
  cmd.run:
    - name: cat /etc/resolv.conf.chatmail-saved > /etc/resolv.conf && rm /etc/resolv.conf.chatmail-saved
    - onlyif: test -e /etc/resolv.conf.chatmail-saved

chatmail-base-clean-journald-config-file-absent:
  file.absent:
    - name: {{ chatmail.lookup.paths.journald_dropin }}

chatmail-base-clean-journald-service-restarted:
  module.run:
    - service.restart:
      - name: systemd-journald
    - onchanges:
      - file: chatmail-base-clean-journald-config-file-absent

chatmail-base-clean-unbound-config-file-absent:
  file.absent:
    - name: /etc/unbound/unbound.conf.d/chatmail.conf

{#- Back to Debian's config, which cannot start on hosts without IPv6 (it
    binds ::1); that is the distribution's state, not a failed clean: hence
    cmd.run with "|| true" rather than a service state that would fail. #}
chatmail-base-clean-unbound-service-restarted:
  cmd.run:
    - name: systemctl try-restart unbound || true
    - onchanges:
      - file: chatmail-base-clean-unbound-config-file-absent
