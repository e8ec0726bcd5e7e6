{#- Debian's coturn.  Its unit is replaced by the drop-in (config.sls)
    before the package is installed, so the service never starts with
    Debian's example configuration (no authentication). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

include:
  - .config

chatmail-turn-pkgs-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.turn | json }}
    - install_recommends: false
    - require:
      - file: chatmail-turn-dropin-file-managed
      - file: chatmail-turn-prepare-file-managed
      - file: chatmail-turn-config-file-managed
      - module: chatmail-turn-dropin-daemon-reloaded
