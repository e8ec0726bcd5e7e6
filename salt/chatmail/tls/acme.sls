{#- tls mode acme: acmetool, its configuration and a desired file per
    domain; certificates are ordered during the highstate (included by
    config.sls when a domain uses the mode). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set acme_email = chatmail.domains.values() | map(attribute='acme_email') | select | first | default('') %}
{%- set acme_domains = [] %}
{%- for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'acme' %}
{%-   do acme_domains.append(domain) %}
{%- endfor %}
{%- for domain in acme_domains %}

chatmail-tls-{{ domain }}-acme-desired-file-managed:
  file.managed:
    - name: /var/lib/acme/desired/{{ domain }}
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail-salt)
        satisfy:
          names:
            - {{ domain }}
            - mta-sts.{{ domain }}
            - www.{{ domain }}
    - require:
      - pkg: chatmail-tls-acme-pkgs-installed
      - file: chatmail-tls-acme-target-file-managed
{%- endfor %}

chatmail-tls-acme-pkgs-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.acme | json }}

{#- /run is a tmpfs: systemd-tmpfiles recreates the webroot at boot, so the
    first highstate after a reboot finds it and changes nothing. #}
chatmail-tls-acme-webroot-tmpfiles-file-managed:
  file.managed:
    - name: /etc/tmpfiles.d/chatmail-acme.conf
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail-salt): acmetool's http-01 webroot
        d /run/acme/acme-challenge 0755 root root -

chatmail-tls-acme-webroot-directory:
  file.directory:
    - name: /var/run/acme/acme-challenge
    - makedirs: true
    - mode: "0755"

chatmail-tls-acme-target-file-managed:
  file.managed:
    - name: /var/lib/acme/conf/target
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail-salt)
        request:
          provider: "{{ chatmail.acme.directory }}"
          key:
            type: ecdsa
          challenge:
            webroot-paths:
              - /var/run/acme/acme-challenge
    - require:
      - pkg: chatmail-tls-acme-pkgs-installed

chatmail-tls-acme-responses-file-managed:
  file.managed:
    - name: /var/lib/acme/conf/responses
    - makedirs: true
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail-salt)
        "acme-enter-email": {{ acme_email | json }}
{%-   for url in chatmail.acme.terms_agreed %}
        "acme-agreement:{{ url }}": true
{%-   endfor %}
    - require:
      - pkg: chatmail-tls-acme-pkgs-installed

chatmail-tls-acme-hook-file-managed:
  file.managed:
    - name: /etc/acme/hooks/chatmail-reload
    - source: salt://{{ tpldir }}/files/acme-hook.sh
    - makedirs: true
    - mode: "0755"

chatmail-tls-acme-order-file-managed:
  file.managed:
    - name: /usr/local/sbin/chatmail-acme-order
    - source: salt://{{ tpldir }}/files/chatmail-acme-order.jinja
    - template: jinja
    - mode: "0755"
    - context:
        chatmail: {{ chatmail | json }}
        domains: {{ acme_domains | json }}
        retired: /var/lib/acme-retired

{#- Certificates are ordered during the highstate, before postfix, dovecot
    and nginx are configured with them.  acmetool answers the http-01
    challenge through nginx (webroot) when nginx runs, and otherwise with a
    listener of its own on port 80 (a fresh host: nginx comes later).  It
    runs when its configuration changed, and again when a domain still has
    no certificate, or an expired one, one lacking a wanted name or one
    from another directory (chatmail-acme-order --check). #}
{%-   set order_requires = [
        'file: chatmail-tls-acme-target-file-managed',
        'file: chatmail-tls-acme-responses-file-managed',
        'file: chatmail-tls-acme-hook-file-managed',
        'file: chatmail-tls-acme-order-file-managed',
        'file: chatmail-tls-acme-webroot-directory'] %}
{%-   for domain in acme_domains %}
{%-     do order_requires.append('file: chatmail-tls-' ~ domain ~ '-acme-desired-file-managed') %}
{%-   endfor %}
{%-   if chatmail.trusted_cas %}
{%-     do order_requires.append('cmd: chatmail-tls-trusted-cas-update-cmd-run') %}
{%-   endif %}

{#- cmd.run: acmetool has no Salt state; chatmail-acme-order wraps its
    reconcile (see files/chatmail-acme-order.jinja).  The first state orders
    when the configuration changed, the second whenever a certificate is
    missing, expired or from another directory. #}
chatmail-tls-acme-reconcile-cmd-run:
  cmd.run:
    - name: /usr/local/sbin/chatmail-acme-order
    - onchanges:
      - file: chatmail-tls-acme-target-file-managed
      - file: chatmail-tls-acme-responses-file-managed
{%-   for domain in acme_domains %}
      - file: chatmail-tls-{{ domain }}-acme-desired-file-managed
{%-   endfor %}
    - require:
{%-   for req in order_requires %}
      - {{ req }}
{%-   endfor %}

chatmail-tls-acme-certificates-cmd-run:
  cmd.run:
    - name: /usr/local/sbin/chatmail-acme-order
    - unless: /usr/local/sbin/chatmail-acme-order --check
    - require:
      - cmd: chatmail-tls-acme-reconcile-cmd-run
{%-   for req in order_requires %}
      - {{ req }}
{%-   endfor %}
