{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

{#- Another MTA (Debian's exim4, pulled in by cron's recommends) would keep
    port 25 after apt replaces it with postfix: stop it first. #}
chatmail-postfix-package-exim4-service-dead:
  service.dead:
    - name: exim4
    - enable: false
    - onlyif: test -e /etc/init.d/exim4

chatmail-postfix-package-pkg-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.postfix | json }}
    - require:
      - service: chatmail-postfix-package-exim4-service-dead
