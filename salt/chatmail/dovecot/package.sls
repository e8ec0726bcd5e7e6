{#- Dovecot's packages from the source chatmail:dovecot:source names (repo.sls).
    patched: every package of the build at exactly the build's version
    (VERSION in the local repository), also when that means leaving a newer
    Debian version (the status report flags an outdated build).
    debian: a patched build still installed is replaced by Debian's version.
    cmd.run: the version is read from the repository unpacked in this same
    run (pkg.installed takes it at render time), and going back to Debian's
    version is a downgrade, which the pkg states do not do. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set build_pkgs = chatmail.lookup.pkgs.dovecot_build %}
{%- set version_file = chatmail.lookup.paths.dovecot_repo ~ "/repo/VERSION" %}
{%- set apt_install = "DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades"
      ~ " -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold" %}

include:
  - .repo

{%- if chatmail.dovecot.source == "patched" %}

chatmail-dovecot-package-version-cmd-run:
  cmd.run:
    - name: >-
        v=$(cat {{ version_file }}) && {{ apt_install }}
        {%- for pkg in build_pkgs %} {{ pkg }}="$v"{% endfor %}
    - unless: >-
        v=$(cat {{ version_file }}) &&
        test "$(dpkg-query -W -f='${Version} ${db:Status-Abbrev}\n' {{ build_pkgs | join(' ') }}
        2>/dev/null | grep -cxF "$v ii ")" = {{ build_pkgs | length }}
    - require:
      - cmd: chatmail-dovecot-repo-unpack-cmd-run
      - cmd: chatmail-dovecot-repo-apt-update-cmd-run
      - file: chatmail-dovecot-repo-pin-file-managed
{%- else %}

chatmail-dovecot-package-version-cmd-run:
  cmd.run:
    - name: {{ apt_install }} {{ build_pkgs | join(' ') }}
    - onlyif: >-
        dpkg-query -W -f='${Version}\n' {{ build_pkgs | join(' ') }} 2>/dev/null
        | grep -q '+chatmail'
    - require:
      - module: chatmail-dovecot-repo-apt-updated
{%- endif %}

chatmail-dovecot-package-pkg-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.dovecot | json }}
    - require:
      - cmd: chatmail-dovecot-package-version-cmd-run
