{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

{#- dovecot.conf was already checked before it was written (check_cmd);
    this checks the whole set once more, as dovecot itself will read it
    (cmd.run: no Salt state validates a dovecot configuration). #}
chatmail-dovecot-service-config-checked:
  cmd.run:
    - name: doveconf -n >/dev/null
    - onchanges:
      - file: chatmail-dovecot-config-file-managed
      - file: chatmail-dovecot-config-auth-file-managed
      - file: chatmail-dovecot-config-push-lua-file-managed
      - file: chatmail-dovecot-config-login-limit-file-managed

chatmail-dovecot-service-running:
  service.running:
    - name: dovecot
    - enable: true
    - require:
      - cmd: chatmail-dovecot-service-config-checked
    - watch:
      - file: chatmail-dovecot-config-file-managed
      - file: chatmail-dovecot-config-auth-file-managed
      - file: chatmail-dovecot-config-push-lua-file-managed
      - file: chatmail-dovecot-config-login-limit-file-managed
      - file: chatmail-dovecot-config-systemd-dropin-file-managed
