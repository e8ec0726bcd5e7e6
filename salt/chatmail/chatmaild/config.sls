{#- chatmail.ini and the systemd units of the chatmaild daemons and timers. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units, timers with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set config_group = chatmail.lookup.users.config_group %}
{%- set metadata_group = chatmail.lookup.users.metadata_group %}
{%- set secrets = salt['chatmail_config.turn_secret_files'](chatmail) %}

include:
  - {{ tplroot }}.base.config

{#- chatmail.ini holds no secret, but only its readers get it: the chatmaild
    units (SupplementaryGroups), dovecot's quota-warning script (extra_groups)
    and fcgiwrap for /new (drop-in below), through the group made by base. #}
chatmail-chatmaild-config-file-managed:
  file.managed:
    - name: {{ paths.ini }}
    - source: salt://{{ tpldir }}/files/chatmail.ini.jinja
    - template: jinja
    - user: root
    - group: {{ config_group }}
    - mode: "0640"
    - context:
        chatmail: {{ chatmail | json }}
    - require:
      - file: chatmail-base-config-directory
      - group: chatmail-base-config-group-present

{#- TURN secrets: one file per domain that has one, readable by root and
    the group that only the chatmail-metadata unit gets (units.jinja);
    chatmail.ini names the file (turn_secret_file).  show_changes: false
    keeps the secret out of the highstate's output. #}
chatmail-chatmaild-secrets-directory:
  file.directory:
    - name: {{ paths.secrets_dir }}
    - user: root
    - group: {{ metadata_group }}
    - mode: "0750"
    - require:
      - file: chatmail-base-config-directory
      - group: chatmail-base-metadata-group-present
{%- for domain, path in secrets | dictsort %}
{%-   if not chatmail.domains[domain].turn_secret %}

{#- no secret in the pillar: the relay's own TURN server (chatmail.turn)
    gets one made here, once; it never leaves the host.  cmd.run: a
    file state would carry the secret in its return and diff. #}
chatmail-chatmaild-turn-secret-{{ domain }}-generated:
  cmd.run:
    - name: >-
        umask 027 && openssl rand -hex 32 > {{ path }}.tmp
        && chgrp {{ metadata_group }} {{ path }}.tmp && mv {{ path }}.tmp {{ path }}
    - creates: {{ path }}
    - require:
      - file: chatmail-chatmaild-secrets-directory
{%-   else %}

chatmail-chatmaild-turn-secret-{{ domain }}-file-managed:
  file.managed:
    - name: {{ path }}
    - contents: {{ chatmail.domains[domain].turn_secret | json }}
    - user: root
    - group: {{ metadata_group }}
    - mode: "0640"
    - show_changes: false
    - require:
      - file: chatmail-chatmaild-secrets-directory
{%-   endif %}
{%- endfor %}

{#- secret files of domains the pillar no longer has #}
chatmail-chatmaild-stale-turn-secrets-pruned:
  chatmail_files.pruned:
    - name: {{ paths.secrets_dir }}
    - match: 'turn_secret.*'
    - kind: file
    - keep: {{ secrets.values() | map('regex_replace', '^.*/', '') | list | json }}
    - require:
      - file: chatmail-chatmaild-secrets-directory

{#- /new: fcgiwrap (www-data) runs chatmail-newemail, which reads chatmail.ini;
    only that service gets the group, not nginx's workers. #}
chatmail-chatmaild-fcgiwrap-dropin-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/fcgiwrap.service.d/chatmail.conf
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail-salt): chatmail-newemail reads chatmail.ini
        [Service]
        SupplementaryGroups={{ config_group }}
    - require:
      - group: chatmail-base-config-group-present

{%- for name, unit in units.items() %}

chatmail-chatmaild-{{ name }}-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.service
    - source: salt://{{ tpldir }}/files/daemon.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        unit: {{ unit | json }}
{%- endfor %}

{%- for name, unit in timers.items() %}

chatmail-chatmaild-{{ name }}-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.service
    - source: salt://{{ tpldir }}/files/daemon.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        unit: {{ unit | json }}

chatmail-chatmaild-{{ name }}-timer-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.timer
    - source: salt://{{ tpldir }}/files/daily.timer.jinja
    - template: jinja
    - mode: "0644"
    - context:
        unit: {{ unit | json }}
{%- endfor %}

chatmail-chatmaild-newemail-cgi-file-managed:
  file.managed:
    - name: /usr/local/lib/chatmail-cgi/newemail
    - source: salt://{{ tpldir }}/files/newemail.cgi.jinja
    - template: jinja
    - makedirs: true
    - mode: "0755"
    - context:
        chatmail: {{ chatmail | json }}
