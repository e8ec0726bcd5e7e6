{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

chatmail-base-journald-service-restarted:
  module.run:
    - service.restart:
      - name: systemd-journald
    - onchanges:
      - file: chatmail-base-journald-config-file-managed

{#- Debian's own unbound config also binds ::1, which fails on hosts without
    IPv6 and may leave the unit in its start limit: clear that before the
    restart with our config.  cmd.run: Salt's service functions have no
    reset-failed, and a unit that never failed is fine (|| true). #}
chatmail-base-unbound-reset-failed-cmd-run:
  cmd.run:
    - name: systemctl reset-failed unbound.service || true
    - onchanges:
      - file: chatmail-base-unbound-config-file-managed

chatmail-base-unbound-service-running:
  service.running:
    - name: unbound
    - enable: true
    - watch:
      - file: chatmail-base-unbound-config-file-managed
    - require:
      - pkg: chatmail-base-pkgs-installed
      - cmd: chatmail-base-unbound-reset-failed-cmd-run
{%- if chatmail.dns.manage_resolv_conf %}

{#- Written in place, never replaced: in containers /etc/resolv.conf is often
    a bind mount that cannot be renamed over (file.managed renames), hence
    cmd.run.  Only once unbound answers.  The previous content is kept for
    chatmail.base.clean. #}
chatmail-base-resolv-conf-cmd-run:
  cmd.run:
    - name: >-
        { [ -e /etc/resolv.conf.chatmail-saved ] || cp /etc/resolv.conf /etc/resolv.conf.chatmail-saved; } &&
        printf 'nameserver 127.0.0.1\n' > /etc/resolv.conf
    - unless: test "$(grep '^nameserver' /etc/resolv.conf)" = "nameserver 127.0.0.1"
    - onlyif: systemctl is-active --quiet unbound
    - require:
      - service: chatmail-base-unbound-service-running
{%- endif %}
