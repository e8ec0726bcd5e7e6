{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
# Undo chatmail.dovecot.  Mailboxes are left alone (chatmail.chatmaild owns
# the mailbox tree).

chatmail-dovecot-clean-service-dead:
  service.dead:
    - name: dovecot
    - enable: false

chatmail-dovecot-clean-config-file-absent:
  file.absent:
    - names:
      - /etc/dovecot/chatmail-auth.conf.ext
      - /etc/dovecot/push_notification.lua
      - /etc/dovecot/chatmail-login-limit.lua
      - /etc/dovecot/chatmail-dedupe.sieve
      - /etc/dovecot/chatmail-dedupe.svbin
      - /etc/dovecot/chatmail-dedupe.svbin.stamp
      - /usr/local/bin/chatmail-quota-warning
      - /etc/systemd/system/dovecot.service.d/chatmail.conf
      - /etc/apt/preferences.d/chatmail-dovecot
      - /etc/apt/sources.list.d/chatmail-dovecot.list
      - {{ chatmail.lookup.paths.dovecot_repo }}
    - require:
      - service: chatmail-dovecot-clean-service-dead

chatmail-dovecot-clean-package-pkg-removed:
  pkg.removed:
    - pkgs: {{ chatmail.lookup.pkgs.dovecot | json }}
    - require:
      - file: chatmail-dovecot-clean-config-file-absent
