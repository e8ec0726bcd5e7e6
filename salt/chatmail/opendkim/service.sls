{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

{#- Refuse to restart with a config that opendkim itself rejects (cmd.run:
    no Salt state validates an opendkim configuration). #}
chatmail-opendkim-service-config-checked:
  cmd.run:
    - name: opendkim -n -x /etc/opendkim.conf
    - onchanges:
      - file: chatmail-opendkim-config-file-managed
      - file: chatmail-opendkim-config-keytable-file-managed
      - file: chatmail-opendkim-config-signingtable-file-managed

{#- systemd reads the drop-in (Restart=) before opendkim is (re)started with
    it, not at some later daemon-reload (found for postfix by tests/faults). #}
chatmail-opendkim-service-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-opendkim-config-systemd-dropin-file-managed

chatmail-opendkim-service-running:
  service.running:
    - name: opendkim
    - enable: true
    - require:
      - module: chatmail-opendkim-service-daemon-reloaded
      - cmd: chatmail-opendkim-service-config-checked
      - file: chatmail-opendkim-config-socketdir-directory
    - watch:
      - file: chatmail-opendkim-config-file-managed
      - file: chatmail-opendkim-config-keytable-file-managed
      - file: chatmail-opendkim-config-signingtable-file-managed
      - file: chatmail-opendkim-config-systemd-dropin-file-managed
{%- for domain in chatmail.domain_list if not chatmail.domains[domain].is_ip %}
      - chatmail_dkim: chatmail-opendkim-config-key-{{ domain }}-present
{%- endfor %}
