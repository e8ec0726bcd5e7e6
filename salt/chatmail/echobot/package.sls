{#- The bot's own system user, a venv with deltachat-rpc-client and
    deltachat-rpc-server from PyPI (or the wheelhouse chatmail:lookup:pip:args
    names), and the bot script.  All of it root-owned: the bot writes only
    its state directory. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/echobot/map.jinja" import echobot_dir, venv, script, user, state_dir, pkgs with context %}

chatmail-echobot-group-present:
  group.present:
    - name: {{ user }}
    - system: true

chatmail-echobot-user-present:
  user.present:
    - name: {{ user }}
    - gid: {{ user }}
    - system: true
    - home: {{ state_dir }}
    - createhome: false
    - shell: /usr/sbin/nologin
    - require:
      - group: chatmail-echobot-group-present

chatmail-echobot-pkgs-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.chatmaild | json }}

chatmail-echobot-directory:
  file.directory:
    - name: {{ echobot_dir }}
    - user: root
    - group: root
    - mode: "0755"

chatmail-echobot-venv-requirements:
  chatmail_venv.requirements:
    - name: {{ venv }}
    - pkgs: {{ pkgs | json }}
    - pip_args: {{ chatmail.lookup.pip.args | yaml_encode }}
    - require:
      - pkg: chatmail-echobot-pkgs-installed
      - file: chatmail-echobot-directory

chatmail-echobot-script-file-managed:
  file.managed:
    - name: {{ script }}
    - source: salt://{{ tpldir }}/files/echobot.py
    - user: root
    - group: root
    - mode: "0644"
    - require:
      - file: chatmail-echobot-directory
