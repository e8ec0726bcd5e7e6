{#- chatmaild from this state tree into a venv that sees Debian's
    python3-aiosmtpd and python3-dkim (--system-site-packages). pip runs only
    when the source tree's hash differs from the installed one
    (_states/chatmail_venv.py). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}

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

chatmail-chatmaild-venv-installed:
  chatmail_venv.installed:
    - name: {{ paths.venv }}
    - source: {{ paths.src_dir }}
    - pip_args: {{ chatmail.lookup.pip.args | yaml_encode }}
    - require:
      - pkg: chatmail-chatmaild-pkgs-installed
      - file: chatmail-chatmaild-src-directory-recurse
