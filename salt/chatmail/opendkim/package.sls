{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-opendkim-package-pkg-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.opendkim | json }}
