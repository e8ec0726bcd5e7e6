{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set dkim_dir = chatmail.lookup.paths.dkim_dir %}

include:
  - .package
  - {{ tplroot }}.postfix.package

chatmail-opendkim-config-keydir-directory:
  file.directory:
    - name: {{ dkim_dir }}
    - user: opendkim
    - group: opendkim
    - mode: '0750'
    - require:
      - pkg: chatmail-opendkim-package-pkg-installed

{#- One key per domain; created once, never rotated by a highstate.
    IP-only domains are not signed (no DNS to publish a key in). #}
{%- for domain in chatmail.domain_list %}
{%-   set dom = chatmail.domains[domain] %}
{%-   if not dom.is_ip %}

chatmail-opendkim-config-key-{{ domain }}-present:
  chatmail_dkim.key_present:
    - name: {{ domain }}
    - selector: {{ dom.dkim.selector }}
    - keydir: {{ dkim_dir }}
    - user: opendkim
    - group: opendkim
    - require:
      - file: chatmail-opendkim-config-keydir-directory
{%-   endif %}
{%- endfor %}

{%- for name in ['KeyTable', 'SigningTable'] %}

chatmail-opendkim-config-{{ name | lower }}-file-managed:
  file.managed:
    - name: /etc/opendkim/{{ name }}
    - source: salt://{{ tpldir }}/files/{{ name }}.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: opendkim
    - mode: '0640'
    - makedirs: true
    - require:
      - pkg: chatmail-opendkim-package-pkg-installed
{%- endfor %}

chatmail-opendkim-config-file-managed:
  file.managed:
    - name: /etc/opendkim.conf
    - source: salt://{{ tpldir }}/files/opendkim.conf.jinja
    - template: jinja
    - context:
        chatmail: {{ chatmail | json }}
    - user: root
    - group: root
    - mode: '0644'
    - require:
      - pkg: chatmail-opendkim-package-pkg-installed

{#- The milter socket lives inside postfix's queue directory so that postfix
    reaches it by a relative path; only the opendkim group may connect. #}
chatmail-opendkim-config-socketdir-directory:
  file.directory:
    - name: /var/spool/postfix/opendkim
    - user: opendkim
    - group: opendkim
    - mode: '0750'
    - require:
      - pkg: chatmail-opendkim-package-pkg-installed
      - pkg: chatmail-postfix-package-pkg-installed

{#- Debian's unit restarts only on failure; restart always, as the milter is
    in the path of every outgoing message. #}
chatmail-opendkim-config-systemd-dropin-file-managed:
  file.managed:
    - name: /etc/systemd/system/opendkim.service.d/chatmail.conf
    - makedirs: true
    - mode: '0644'
    - contents: |
        # managed by salt (chatmail.opendkim)
        [Service]
        Restart=always
        RestartSec=2
