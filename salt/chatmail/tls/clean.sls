{#- Stops watching external certificates and drops the acme renewal (timer,
    hook, order script); the certificates and keys themselves stay (they are
    data), except the private CA's key (a secret of the pillar).  The extra
    trusted CAs leave the system trust store. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-tls-external-path-service-dead:
  service.dead:
    - name: chatmail-tls-reload.path
    - enable: false

chatmail-tls-acme-timer-dead:
  service.dead:
    - name: acmetool.timer
    - enable: false

chatmail-tls-clean-files-absent:
  file.absent:
    - names:
      - {{ chatmail.lookup.paths.systemd_dir }}/chatmail-tls-reload.path
      - {{ chatmail.lookup.paths.systemd_dir }}/chatmail-tls-reload.service
      - /etc/acme/hooks/chatmail-reload
      - /usr/local/sbin/chatmail-acme-order
      - /etc/tmpfiles.d/chatmail-acme.conf
    - require:
      - service: chatmail-tls-external-path-service-dead
      - service: chatmail-tls-acme-timer-dead

chatmail-tls-clean-ca-directory-absent:
  file.absent:
    - name: {{ chatmail.lookup.paths.tls_dir }}/ca

chatmail-tls-clean-trusted-cas-pruned:
  chatmail_files.pruned:
    - name: /usr/local/share/ca-certificates
    - match: 'chatmail-*.crt'
    - kind: file

{#- cmd.run: Salt has no state for the system trust store. #}
chatmail-tls-clean-trusted-cas-update-cmd-run:
  cmd.run:
    - name: update-ca-certificates --fresh
    - onchanges:
      - chatmail_files: chatmail-tls-clean-trusted-cas-pruned
