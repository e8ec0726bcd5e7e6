{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

{#- Another MTA (Debian's exim4, pulled in by cron's recommends) would keep
    port 25 after apt replaces it with postfix: stop it first. #}
chatmail-postfix-package-exim4-service-dead:
  service.dead:
    - name: exim4
    - enable: false
    - onlyif: test -e /etc/init.d/exim4

{#- Its init script matches the daemon by executable, which fails where
    /proc/<pid>/exe of the (non-dumpable) daemon is unreadable, e.g. in a
    container: the daemon survives "stop".  Match it by process name
    (cmd.run: service.dead would use that init script). #}
chatmail-postfix-package-exim4-cmd-run:
  cmd.run:
    - name: start-stop-daemon --stop --oknodo --retry 10 --name exim4
    - onlyif: pgrep -x exim4
    - require:
      - service: chatmail-postfix-package-exim4-service-dead

{#- The package's own configuration (debconf "Internet Site") takes the
    host's name as myhostname and fails on a numeric one, as an IP-only
    relay's host may have: install it unconfigured, config.sls writes
    main.cf.  Only before the first installation (unless). #}
chatmail-postfix-package-debconf-cmd-run:
  cmd.run:
    - name: >-
        printf '%s\n'
        'postfix postfix/main_mailer_type select No configuration'
        'postfix postfix/mailname string {{ chatmail.primary }}'
        | debconf-set-selections
    - unless: dpkg-query -W -f='${db:Status-Abbrev}' postfix 2>/dev/null | grep -q '^ii'

chatmail-postfix-package-pkg-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.postfix | json }}
    - require:
      - cmd: chatmail-postfix-package-exim4-cmd-run
      - cmd: chatmail-postfix-package-debconf-cmd-run
