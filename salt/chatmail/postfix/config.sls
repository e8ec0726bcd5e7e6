{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set sni = [] %}
{%- set sni_rebuild = 'test ! -e /etc/postfix/tls_server_sni || { umask 077; postmap -F hash:/etc/postfix/tls_server_sni && chmod 0600 /etc/postfix/tls_server_sni.db; }' %}
{%- for d in chatmail.domain_list if not chatmail.domains[d].is_ip %}
{%-   do sni.append(chatmail.domains[d].tls) %}
{%- endfor %}

include:
  - .package
{%- if sni %}
  - {{ tplroot }}.opendkim.package
{%- endif %}

{#- Files postfix reads directly (regexp tables need no postmap). #}
{%- for name in ['main.cf', 'master.cf', 'submission_header_cleanup', 'lmtp_header_cleanup',
                 'login_map', 'smtp_tls_policy_map', 'mx_command_filter'] %}

chatmail-postfix-config-{{ name | replace('.', '-') | replace('_', '-') }}-file-managed:
  file.managed:
    - name: /etc/postfix/{{ name }}
    - source: salt://{{ tpldir }}/files/{{ name }}.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-postfix-package-pkg-installed
{%- endfor %}

{%- if sni %}

{#- SNI: domain -> key + chain.  "postmap -F" copies the files' content into
    the .db, so it is rebuilt when this list changes or when any of the
    certificates or keys is newer than the .db (e.g. after a renewal).
    cmd.run: the map is built by "postmap -F", which no Salt state runs. #}
chatmail-postfix-config-tls-server-sni-file-managed:
  file.managed:
    - name: /etc/postfix/tls_server_sni
    - source: salt://{{ tpldir }}/files/tls_server_sni.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-postfix-package-pkg-installed

{#- cmd.run: no Salt state builds a postfix lookup table (postmap -F). #}
chatmail-postfix-config-tls-server-sni-cmd-run:
  cmd.run:
    - name: {{ sni_rebuild | yaml_encode }}
    - unless: >-
        test -s /etc/postfix/tls_server_sni.db
        && test /etc/postfix/tls_server_sni.db -nt /etc/postfix/tls_server_sni
{%-   for tls in sni %}
        && test /etc/postfix/tls_server_sni.db -nt {{ tls.cert }}
        && test /etc/postfix/tls_server_sni.db -nt {{ tls.key }}
{%-   endfor %}
    - require:
      - file: chatmail-postfix-config-tls-server-sni-file-managed

{#- postfix connects to the DKIM milter socket, which only group opendkim
    may use. #}
chatmail-postfix-config-opendkim-group-present:
  group.present:
    - name: opendkim
    - addusers:
      - postfix
    - require:
      - pkg: chatmail-postfix-package-pkg-installed
      - pkg: chatmail-opendkim-package-pkg-installed
{%- endif %}

{#- Debian's unit does not restart postfix when its master dies: with
    GuessMainPID=no and no PIDFile systemd does not know the master, so
    Restart= alone never fires (a kill -9 of the master left the relay
    without postfix, found by tests/faults).  PIDFile names the master of
    the default instance, the only one a relay runs.  Every
    start and reload (e.g. the TLS renewal hook's) first reloads the SNI
    table from the certificate files, which "postmap -F" copies into the .db. #}
chatmail-postfix-config-systemd-dropin-file-managed:
  file.managed:
    - name: /etc/systemd/system/postfix@.service.d/chatmail.conf
    - makedirs: true
    - mode: '0644'
    - contents: |
        # managed by salt (chatmail.postfix)
        [Service]
        PIDFile=/var/spool/postfix/pid/master.pid
        Restart=always
        RestartSec=2
        ExecStartPre=/bin/sh -c '{{ sni_rebuild }}'
        ExecReload=
        ExecReload=/bin/sh -c '{{ sni_rebuild }}'
        ExecReload=/usr/sbin/postmulti -i %i -p reload
