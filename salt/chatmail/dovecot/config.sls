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

{#- Exactly once per mailbox (params dedupe_period, docs/dovecot.md): the
    relay's Sieve script, run by LMTP before every delivery.  sievec compiles
    it here, as root, next to it (.svbin, which sievec writes 0600: made
    readable): LMTP runs as vmail, cannot write /etc/dovecot and would
    otherwise compile it at every delivery.  The stamp
    names what the binary was compiled from (the script's sha256 and
    dovecot-sieve's version, whose binary format may change): compiled again
    when either changes or the binary is gone. #}
{%- set sieve = "/etc/dovecot/chatmail-dedupe.sieve" %}
{%- set svbin = "/etc/dovecot/chatmail-dedupe.svbin" %}
{%- set stamp = "/etc/dovecot/chatmail-dedupe.svbin.stamp" %}
{%- set compiled_from = "\"$(sha256sum < " ~ sieve ~ " | cut -c1-64)"
      ~ " $(dpkg-query -W -f='${Version}' dovecot-sieve)\"" %}
{%- if chatmail.params.dedupe_period | int > 0 %}

chatmail-dovecot-config-dedupe-sieve-file-managed:
  file.managed:
    - name: {{ sieve }}
    - source: salt://{{ tpldir }}/files/chatmail-dedupe.sieve
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-dovecot-package-pkg-installed

{#- cmd.run: no Salt state compiles a Sieve script (sievec). #}
chatmail-dovecot-config-dedupe-sieve-compiled-cmd-run:
  cmd.run:
    - name: >-
        sievec {{ sieve }} {{ svbin }} && chmod 0644 {{ svbin }}
        && echo {{ compiled_from }} > {{ stamp }}
    - unless: >-
        test -s {{ svbin }} && test "$(stat -c %a {{ svbin }})" = 644
        && test "$(cat {{ stamp }} 2>/dev/null)" = {{ compiled_from }}
    - require:
      - file: chatmail-dovecot-config-dedupe-sieve-file-managed
      - file: chatmail-dovecot-config-file-managed
{%- else %}

chatmail-dovecot-config-dedupe-sieve-file-absent:
  file.absent:
    - names:
      - {{ sieve }}
      - {{ svbin }}
      - {{ stamp }}
{%- endif %}

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

{#- Every IDLE session, live or hibernated, holds an inotify instance of the
    vmail user; beyond the kernel's default of 128 Dovecot falls back to
    polling every mailbox_idle_check_interval (30 s).  Containers cannot set
    it (the host's value applies, set it there). #}
{%- if grains.get("virtual") != "container" %}

chatmail-dovecot-config-inotify-sysctl-present:
  sysctl.present:
    - name: fs.inotify.max_user_instances
    - value: {{ [65535, chatmail.params.max_imap_connections * 2] | max }}
{%- endif %}
