{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .package
  # the LMTP and auth sockets live in postfix's queue directory, owned by postfix
  - {{ tplroot }}.postfix.package
  # the vmail account and the group of chatmail.ini's readers (quota-warning)
  - {{ tplroot }}.base.config

{#- dovecot.conf is complete on its own (Debian's conf.d is not included);
    it is checked with doveconf before it replaces the running file. #}
chatmail-dovecot-config-file-managed:
  file.managed:
    - name: /etc/dovecot/dovecot.conf
    - source: salt://{{ tpldir }}/files/dovecot.conf.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: dovecot
    - mode: '0644'
    - check_cmd: doveconf -n -c
    - require:
      - pkg: chatmail-dovecot-package-pkg-installed
      - pkg: chatmail-postfix-package-pkg-installed
      - group: chatmail-base-config-group-present

chatmail-dovecot-config-auth-file-managed:
  file.managed:
    - name: /etc/dovecot/chatmail-auth.conf.ext
    - source: salt://{{ tpldir }}/files/chatmail-auth.conf.ext.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: dovecot
    - mode: '0640'
    - require:
      - pkg: chatmail-dovecot-package-pkg-installed

chatmail-dovecot-config-push-lua-file-managed:
  file.managed:
    - name: /etc/dovecot/push_notification.lua
    - source: salt://{{ tpldir }}/files/push_notification.lua.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-dovecot-package-pkg-installed

chatmail-dovecot-config-login-limit-file-managed:
  file.managed:
    - name: /etc/dovecot/chatmail-login-limit.lua
    - source: salt://{{ tpldir }}/files/chatmail-login-limit.lua.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-dovecot-package-pkg-installed

{#- Dovecot runs this as vmail when a mailbox passes 75% of its quota. #}
chatmail-dovecot-config-quota-warning-file-managed:
  file.managed:
    - name: /usr/local/bin/chatmail-quota-warning
    - source: salt://{{ tpldir }}/files/chatmail-quota-warning.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0755'

chatmail-dovecot-config-systemd-dropin-file-managed:
  file.managed:
    - name: /etc/systemd/system/dovecot.service.d/chatmail.conf
    - makedirs: true
    - mode: '0644'
    - contents: |
        # managed by salt (chatmail.dovecot)
        [Service]
        Restart=always
        RestartSec=2
