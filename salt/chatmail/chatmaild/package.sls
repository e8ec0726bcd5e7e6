{#- chatmaild from this state tree into a venv that sees Debian's
    python3-aiosmtpd and python3-dkim (--system-site-packages). pip runs only
    when the source tree's hash differs from the installed one. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set hashcmd = "cd " ~ paths.src_dir ~ " && find pyproject.toml src -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1" %}

chatmail-chatmaild-pkgs-installed:
  pkg.installed:
    - pkgs: {{ (chatmail.lookup.pkgs.chatmaild + chatmail.lookup.pkgs.fcgiwrap) | json }}

chatmail-chatmaild-src-directory-recurse:
  file.recurse:
    - name: {{ paths.src_dir }}
    - source: salt://chatmaild
    - clean: true
    - user: root
    - group: root
    - dir_mode: "0755"
    - file_mode: "0644"
    - exclude_pat: E@(^|/)(tests|__pycache__|build|\.[^/]*|[^/]*\.egg-info)(/|$)|\.pyc$

chatmail-chatmaild-venv-cmd-run:
  cmd.run:
    - name: /usr/bin/python3 -m venv --system-site-packages {{ paths.venv }}
    - creates: {{ paths.venv }}/bin/python
    - require:
      - pkg: chatmail-chatmaild-pkgs-installed

{#- Built from a scratch copy so that the source tree stays exactly as Salt
    put it (no build/ or egg-info that file.recurse would then remove). #}
chatmail-chatmaild-pip-cmd-run:
  cmd.run:
    - name: >-
        tmp=$(mktemp -d) && cp -r {{ paths.src_dir }}/. "$tmp" &&
        {{ paths.venv }}/bin/python -m pip install --quiet --no-deps --no-index
        --no-build-isolation --force-reinstall {{ chatmail.lookup.pip.args }} "$tmp";
        rc=$?; rm -rf "$tmp";
        [ $rc = 0 ] && ({{ hashcmd }}) > {{ paths.venv }}/.chatmaild-src.sha256;
        exit $rc
    - unless: test "$({{ hashcmd }})" = "$(cat {{ paths.venv }}/.chatmaild-src.sha256 2>/dev/null)"
    - require:
      - file: chatmail-chatmaild-src-directory-recurse
      - cmd: chatmail-chatmaild-venv-cmd-run
