{#- Per domain certificate: self-signed (created once, never regenerated),
    ca (issued on the host by the pillar CA chatmail:tls_ca with Salt's x509
    states; reissued when it nears expiry or the CA changes), acme (acmetool
    desired file; issued by acmetool reconcile) or external (files provided
    by the operator; watched by a systemd path unit).  Extra trusted CAs
    (chatmail:trusted_cas) go into the system trust store. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}
{%- set ca_dir = paths.tls_dir ~ '/ca' %}
{%- set trust_dir = '/usr/local/share/ca-certificates' %}

chatmail-tls-directory:
  file.directory:
    - name: {{ paths.tls_dir }}
    - user: root
    - group: root
    - mode: "0755"
    - makedirs: true

{%- for domain in chatmail.domain_list %}
{%-   set d = chatmail.domains[domain] %}
{%-   if d.is_ip %}
{%-     set san = 'IP:' ~ domain %}
{%-   else %}
{%-     set san = 'DNS:' ~ domain ~ ',DNS:mta-sts.' ~ domain ~ ',DNS:www.' ~ domain %}
{%-   endif %}
{%-   if d.tls.mode == 'self' %}

chatmail-tls-{{ domain }}-directory:
  file.directory:
    - name: {{ paths.tls_dir }}/{{ domain }}
    - user: root
    - group: root
    - mode: "0755"
    - require:
      - file: chatmail-tls-directory

{#- cmd.run, not x509.certificate_managed: the x509 states (python
    cryptography) refuse DNS names with "_" labels (IDNA), and "_" domains
    are exactly the self-signed ones Delta Chat accepts.  Made once. #}
chatmail-tls-{{ domain }}-selfsigned-cmd-run:
  cmd.run:
    - name: >-
        umask 077 &&
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
        -nodes -days 36500 -subj '/CN={{ domain }}'
        -addext 'subjectAltName={{ san }}'
        -keyout '{{ d.tls.key }}.tmp' -out '{{ d.tls.cert }}.tmp' &&
        chmod 0644 '{{ d.tls.cert }}.tmp' &&
        mv '{{ d.tls.key }}.tmp' '{{ d.tls.key }}' &&
        mv '{{ d.tls.cert }}.tmp' '{{ d.tls.cert }}'
    - creates:
      - {{ d.tls.cert }}
      - {{ d.tls.key }}
    - require:
      - file: chatmail-tls-{{ domain }}-directory
{%-   elif d.tls.mode == 'ca' %}

chatmail-tls-{{ domain }}-directory:
  file.directory:
    - name: {{ paths.tls_dir }}/{{ domain }}
    - user: root
    - group: root
    - mode: "0755"
    - require:
      - file: chatmail-tls-directory

chatmail-tls-{{ domain }}-ca-private-key-managed:
  x509.private_key_managed:
    - name: {{ d.tls.key }}
    - algo: ec
    - keysize: 256
    - user: root
    - group: root
    - mode: "0600"
    - require:
      - file: chatmail-tls-{{ domain }}-directory

chatmail-tls-{{ domain }}-ca-certificate-managed:
  x509.certificate_managed:
    - name: {{ d.tls.cert }}
    - signing_cert: {{ ca_dir }}/ca.pem
    - signing_private_key: {{ ca_dir }}/ca.key
    - private_key: {{ d.tls.key }}
    - append_certs:
      - {{ ca_dir }}/ca.pem
    - subject:
        CN: {{ domain }}
    - subjectAltName: {{ san | yaml_encode }}
    - basicConstraints: "critical, CA:FALSE"
    - keyUsage: "critical, digitalSignature, keyEncipherment"
    - extendedKeyUsage: serverAuth
    - days_valid: {{ chatmail.tls_ca.days_valid }}
    - days_remaining: {{ chatmail.tls_ca.days_remaining }}
    - user: root
    - group: root
    - mode: "0644"
    - require:
      - x509: chatmail-tls-{{ domain }}-ca-private-key-managed
      - file: chatmail-tls-ca-cert-file-managed
      - file: chatmail-tls-ca-key-file-managed
{%-   elif d.tls.mode == 'acme' %}

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
{%-   endif %}
{%- endfor %}
{%- if 'ca' in modes %}

{#- The CA key comes straight from the pillar into a 0600 file (never into
    the rendered states or the map); the CA certificate is public. #}
chatmail-tls-ca-directory:
  file.directory:
    - name: {{ ca_dir }}
    - user: root
    - group: root
    - mode: "0700"
    - require:
      - file: chatmail-tls-directory

chatmail-tls-ca-key-file-managed:
  file.managed:
    - name: {{ ca_dir }}/ca.key
    - contents_pillar: chatmail:tls_ca:key
    - show_changes: false
    - user: root
    - group: root
    - mode: "0600"
    - require:
      - file: chatmail-tls-ca-directory

chatmail-tls-ca-cert-file-managed:
  file.managed:
    - name: {{ ca_dir }}/ca.pem
    - contents: {{ chatmail.tls_ca.cert | yaml_encode }}
    - user: root
    - group: root
    - mode: "0644"
    - require:
      - file: chatmail-tls-ca-directory
{%- else %}

chatmail-tls-ca-directory-absent:
  file.absent:
    - name: {{ ca_dir }}
{%- endif %}
{%- set trusted = [] %}
{%- for pem in chatmail.trusted_cas %}
{%-   do trusted.append(trust_dir ~ '/chatmail-' ~ loop.index ~ '.crt') %}

chatmail-tls-trusted-ca-{{ loop.index }}-file-managed:
  file.managed:
    - name: {{ trusted[-1] }}
    - contents: {{ pem | yaml_encode }}
    - makedirs: true
    - user: root
    - group: root
    - mode: "0644"
{%- endfor %}

chatmail-tls-trusted-ca-stale-files-pruned:
  chatmail_files.pruned:
    - name: {{ trust_dir }}
    - match: 'chatmail-*.crt'
    - kind: file
    - keep: {{ trusted | map('regex_replace', '^.*/', '') | list | json }}

{#- Rebuilds /etc/ssl/certs (hash links read by postfix's smtp_tls_CApath,
    ca-certificates.crt read by Python and most other clients).  cmd.run:
    Salt has no state for the system trust store. #}
chatmail-tls-trusted-cas-update-cmd-run:
  cmd.run:
    - name: update-ca-certificates
    - onchanges:
      - chatmail_files: chatmail-tls-trusted-ca-stale-files-pruned
{%- for path in trusted %}
      - file: chatmail-tls-trusted-ca-{{ loop.index }}-file-managed
{%- endfor %}
{%- if 'acme' in modes %}
{%-   set acme_email = chatmail.domains.values() | map(attribute='acme_email') | select | first | default('') %}
{%-   set acme_domains = [] %}
{%-   for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'acme' %}
{%-     do acme_domains.append(domain) %}
{%-   endfor %}

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
{%- endif %}
{%- if 'external' in modes %}

chatmail-tls-external-path-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/chatmail-tls-reload.path
    - source: salt://{{ tpldir }}/files/chatmail-tls-reload.path.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}

chatmail-tls-external-service-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/chatmail-tls-reload.service
    - source: salt://{{ tpldir }}/files/chatmail-tls-reload.service
    - mode: "0644"
{%- endif %}

{#- A domain removed from the pillar loses its certificate directory
    (self/ca modes) and its acmetool desired file (acme mode) on the next
    run.  The directories go late (order: last): after postfix and dovecot
    were re-rendered and reloaded without the domain; nginx requires this
    sls, so it reloads right after, having held the old certificates in
    memory until then.  Only entries named after
    domains no longer listed are touched (never the CA directory, never
    desired files not written by this tree). #}

chatmail-tls-stale-directories-pruned:
  chatmail_files.pruned:
    - name: {{ paths.tls_dir }}
    - kind: dir
    - keep: {{ (chatmail.domain_list + ['ca']) | json }}
    - order: last

chatmail-tls-stale-acme-desired-files-pruned:
  chatmail_files.pruned:
    - name: /var/lib/acme/desired
    - kind: file
    - keep: {{ chatmail.domain_list | json }}
    - containing: 'Managed by Salt \(chatmail-salt\)'
