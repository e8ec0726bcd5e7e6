{#- Per bot domain: a password generated on the host, the account
    echo@<domain> made with it, and the bot's systemd unit. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/echobot/map.jinja" import accounts, passwords_dir, unit_file, venv, script, user, state_dir, invites_dir with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set users = chatmail.lookup.users %}

include:
  - {{ tplroot }}.base.config
  - {{ tplroot }}.chatmaild.package
  - {{ tplroot }}.chatmaild.config
  - .package

{#- the bot's passwords: root and the bot's group (its user alone) may read
    them.  (Not systemd's LoadCredential=: where /run has no ACLs, as in
    containers, the unit's user could not read the copy.) #}
chatmail-echobot-passwords-directory:
  file.directory:
    - name: {{ passwords_dir }}
    - user: root
    - group: {{ user }}
    - mode: "0750"
    - require:
      - file: chatmail-base-config-directory
      - group: chatmail-echobot-group-present
{%- for domain, addr in accounts | dictsort %}
{%-   set secret = passwords_dir ~ "/" ~ domain %}
{#-   doveauth runs chatmaild.localaccount's code path as the mailboxes'
      owner, which reads chatmail.ini through the config group #}
{%-   set localaccount = "setpriv --reuid=" ~ users.vmail ~ " --regid=" ~ users.vmail
        ~ " --groups=" ~ users.config_group ~ " -- " ~ paths.venv
        ~ "/bin/python -m chatmaild.localaccount" %}

{#- root:<bot> 0640; the account gets its hash.  Never in the pillar,
    never in the output (cmd.run: a file state would carry it in its
    return and diff). #}
chatmail-echobot-password-{{ domain }}-generated:
  cmd.run:
    - name: >-
        umask 027 && openssl rand -hex 24 > {{ secret }}.tmp
        && chgrp {{ user }} {{ secret }}.tmp && mv {{ secret }}.tmp {{ secret }}
    - creates: {{ secret }}
    - require:
      - file: chatmail-echobot-passwords-directory

{#- the localpart "echo" is shorter than username_min_length, so a first
    login could not create the account: made (or its hash reset to the
    password) here; from then on it is an ordinary account (cmd.run:
    chatmaild's own tool writes the account) #}
chatmail-echobot-account-{{ domain }}-present:
  cmd.run:
    - name: {{ localaccount }} {{ paths.ini }} '{{ addr }}' < {{ secret }}
    - unless: {{ localaccount }} --check {{ paths.ini }} '{{ addr }}' < {{ secret }}
    # the mailboxes' owner may not enter root's home
    - cwd: /
    - require:
      - cmd: chatmail-echobot-password-{{ domain }}-generated
      - chatmail_venv: chatmail-chatmaild-venv-installed
      - file: chatmail-chatmaild-config-file-managed
      - file: chatmail-base-mailboxes-directory
{%- endfor %}

chatmail-echobot-unit-file-managed:
  file.managed:
    - name: {{ unit_file }}
    - source: salt://{{ tpldir }}/files/echobot.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        accounts: {{ accounts | json }}
        venv: {{ venv }}
        script: {{ script }}
        user: {{ user }}
        state_dir: {{ state_dir }}
        invites_dir: {{ invites_dir }}
        passwords_dir: {{ passwords_dir }}

chatmail-echobot-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-echobot-unit-file-managed
