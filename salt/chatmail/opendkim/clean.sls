{%- set tplroot = tpldir.split("/")[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
# Undo chatmail.opendkim.  The DKIM private keys stay in place on purpose:
# they are published in DNS and must survive a reinstall or a host move.

chatmail-opendkim-clean-service-dead:
  service.dead:
    - name: opendkim
    - enable: false

chatmail-opendkim-clean-config-file-absent:
  file.absent:
    - names:
      - /etc/opendkim/KeyTable
      - /etc/opendkim/SigningTable
      - /etc/systemd/system/opendkim.service.d/chatmail.conf
      - /var/spool/postfix/opendkim
    - require:
      - service: chatmail-opendkim-clean-service-dead

chatmail-opendkim-clean-package-pkg-removed:
  pkg.removed:
    - pkgs: {{ chatmail.lookup.pkgs.opendkim | json }}
    - require:
      - file: chatmail-opendkim-clean-config-file-absent
