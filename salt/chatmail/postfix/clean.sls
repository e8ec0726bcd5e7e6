{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
# Undo chatmail.postfix: stop it, remove what chatmail added, remove the
# package (Debian's own main.cf/master.cf come back with a reinstall).

chatmail-postfix-clean-service-dead:
  service.dead:
    - name: postfix
    - enable: false

chatmail-postfix-clean-config-file-absent:
  file.absent:
    - names:
      - /etc/postfix/submission_header_cleanup
      - /etc/postfix/lmtp_header_cleanup
      - /etc/postfix/login_map
      - /etc/postfix/smtp_tls_policy_map
      - /etc/postfix/tls_server_sni
      - /etc/postfix/tls_server_sni.db
      - /etc/systemd/system/postfix@.service.d/chatmail.conf
    - require:
      - service: chatmail-postfix-clean-service-dead

chatmail-postfix-clean-package-pkg-removed:
  pkg.removed:
    - pkgs: {{ chatmail.lookup.pkgs.postfix | json }}
    - require:
      - file: chatmail-postfix-clean-config-file-absent
