{#- Host basics: common packages, the vmail account and directories, journald
    retention and unbound as the local resolver. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set vmail = chatmail.lookup.users.vmail %}

chatmail-base-pkgs-installed:
  pkg.installed:
    - pkgs: {{ (chatmail.lookup.pkgs.base + chatmail.lookup.pkgs.unbound) | json }}

chatmail-base-vmail-group-present:
  group.present:
    - name: {{ vmail }}
    - system: true

chatmail-base-vmail-user-present:
  user.present:
    - name: {{ vmail }}
    - gid: {{ vmail }}
    - home: {{ paths.vmail_home }}
    - createhome: true
    - shell: /usr/sbin/nologin
    - system: true
    - require:
      - group: chatmail-base-vmail-group-present

{#- The readers of chatmail.ini get this group explicitly (chatmaild units,
    dovecot's quota-warning service, fcgiwrap); it has no members. #}
chatmail-base-config-group-present:
  group.present:
    - name: {{ chatmail.lookup.users.config_group }}
    - system: true

{#- The TURN secrets' group: only the chatmail-metadata unit gets it. #}
chatmail-base-metadata-group-present:
  group.present:
    - name: {{ chatmail.lookup.users.metadata_group }}
    - system: true

chatmail-base-vmail-home-directory:
  file.directory:
    - name: {{ paths.vmail_home }}
    - user: {{ vmail }}
    - group: {{ vmail }}
    - mode: "0750"
    - require:
      - user: chatmail-base-vmail-user-present

chatmail-base-mailboxes-directory:
  file.directory:
    - name: {{ chatmail.params.mailboxes_dir }}
    - user: {{ vmail }}
    - group: {{ vmail }}
    - mode: "0700"
    - makedirs: true
    - require:
      - file: chatmail-base-vmail-home-directory

{%- for domain in chatmail.domain_list %}

chatmail-base-mailboxes-{{ domain }}-directory:
  file.directory:
    - name: {{ chatmail.domains[domain].mailboxes_path }}
    - user: {{ vmail }}
    - group: {{ vmail }}
    - mode: "0700"
    - require:
      - file: chatmail-base-mailboxes-directory
{%- endfor %}

chatmail-base-state-directory:
  file.directory:
    - name: {{ chatmail.params.state_dir }}
    - user: {{ vmail }}
    - group: {{ vmail }}
    - mode: "0700"
    - makedirs: true
    - require:
      - user: chatmail-base-vmail-user-present

chatmail-base-config-directory:
  file.directory:
    - name: {{ paths.config_dir }}
    - user: root
    - group: root
    - mode: "0755"

chatmail-base-journald-config-file-managed:
  file.managed:
    - name: {{ paths.journald_dropin }}
    - source: salt://{{ tpldir }}/files/journald.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}

chatmail-base-unbound-config-file-managed:
  file.managed:
    - name: /etc/unbound/unbound.conf.d/chatmail.conf
    - source: salt://{{ tpldir }}/files/unbound.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
    - require:
      - pkg: chatmail-base-pkgs-installed
