{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set ns = namespace(sni=false) %}
{%- for d in chatmail.domain_list if not chatmail.domains[d].is_ip %}{% set ns.sni = true %}{% endfor %}
{%- set files = ['main-cf', 'master-cf', 'submission-header-cleanup', 'lmtp-header-cleanup',
                 'login-map', 'smtp-tls-policy-map', 'mx-command-filter'] %}

include:
  - .config

{#- A configuration postfix does not accept never gets as far as a restart:
    "postfix check" plus any warning postconf prints about main.cf/master.cf.
    cmd.run: Salt has no state that validates a postfix configuration. #}
chatmail-postfix-service-config-checked:
  cmd.run:
    - name: >-
        postfix check
        && w="$(postconf -n 2>&1 >/dev/null; postconf -M 2>&1 >/dev/null)"
        && if [ -n "$w" ]; then echo "$w" >&2; exit 1; fi
    - shell: /bin/sh
    - onchanges:
{%- for f in files %}
      - file: chatmail-postfix-config-{{ f }}-file-managed
{%- endfor %}
{%- if ns.sni %}
      - cmd: chatmail-postfix-config-tls-server-sni-cmd-run
{%- endif %}

{#- Debian's postfix.service is a oneshot wrapper that stays "active" even
    when the real instance (postfix@-) fails: run and restart the instance.
    The wrapper is started too: installed unconfigured (package.sls) it was
    skipped for want of main.cf. #}
{#- systemd reads the drop-in (Restart=, PIDFile=: config.sls) before postfix
    is started or restarted with it: without, the instance started by the
    first highstate ran without them until a later daemon-reload and restart,
    and a kill -9 of its master was never restarted (tests/faults). #}
chatmail-postfix-service-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-postfix-config-systemd-dropin-file-managed

chatmail-postfix-service-enabled:
  service.running:
    - name: postfix
    - enable: true
    - require:
      - cmd: chatmail-postfix-service-config-checked
      - module: chatmail-postfix-service-daemon-reloaded

chatmail-postfix-service-running:
  service.running:
    - name: postfix@-
    - require:
      - service: chatmail-postfix-service-enabled
      - module: chatmail-postfix-service-daemon-reloaded
      - cmd: chatmail-postfix-service-config-checked
    - watch:
{%- for f in files %}
      - file: chatmail-postfix-config-{{ f }}-file-managed
{%- endfor %}
      - file: chatmail-postfix-config-systemd-dropin-file-managed
{%- if ns.sni %}
      - cmd: chatmail-postfix-config-tls-server-sni-cmd-run
      - group: chatmail-postfix-config-opendkim-group-present
{%- endif %}
