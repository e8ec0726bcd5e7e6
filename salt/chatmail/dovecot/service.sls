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

{#- systemd reads the drop-in (Restart=) before dovecot is (re)started with
    it, not at some later daemon-reload (found for postfix by tests/faults). #}
chatmail-dovecot-service-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-dovecot-config-systemd-dropin-file-managed

chatmail-dovecot-service-running:
  service.running:
    - name: dovecot
    - enable: true
    - require:
      - module: chatmail-dovecot-service-daemon-reloaded
      - cmd: chatmail-dovecot-service-config-checked
{%- if chatmail.params.dedupe_period | int > 0 %}
      # LMTP finds the dedupe script compiled when it first runs it
      - cmd: chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run
{%- endif %}
    - watch:
      # a different Dovecot build (dpkg restarts it too; this makes sure)
      - cmd: chatmail-dovecot-package-version-cmd-run
      - file: chatmail-dovecot-config-file-managed
      - file: chatmail-dovecot-config-auth-file-managed
      - file: chatmail-dovecot-config-push-lua-file-managed
      - file: chatmail-dovecot-config-login-limit-file-managed
      - file: chatmail-dovecot-config-systemd-dropin-file-managed
