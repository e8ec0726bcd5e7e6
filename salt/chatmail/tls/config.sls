{#- Per domain certificate: self-signed (created once, never regenerated),
    acme (acmetool desired file; issued by acmetool reconcile) or external
    (files provided by the operator; watched by a systemd path unit). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}

chatmail-tls-directory:
  file.directory:
    - name: {{ paths.tls_dir }}
    - user: root
    - group: root
    - mode: "0755"
    - makedirs: true

{%- for domain in chatmail.domain_list %}
{%-   set d = chatmail.domains[domain] %}
{%-   if d.tls.mode == 'self' %}
{%-     if d.is_ip %}
{%-       set san = 'IP:' ~ domain %}
{%-     else %}
{%-       set san = 'DNS:' ~ domain ~ ',DNS:mta-sts.' ~ domain ~ ',DNS:www.' ~ domain %}
{%-     endif %}

chatmail-tls-{{ domain }}-directory:
  file.directory:
    - name: {{ paths.tls_dir }}/{{ domain }}
    - user: root
    - group: root
    - mode: "0755"
    - require:
      - file: chatmail-tls-directory

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
{%- if 'acme' in modes %}
{%-   set acme_email = chatmail.domains.values() | map(attribute='acme_email') | select | first | default('') %}

chatmail-tls-acme-pkgs-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.acme | json }}

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
          provider: https://acme-v02.api.letsencrypt.org/directory
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
        "acme-enter-email": "{{ acme_email }}"
        "acme-agreement:https://letsencrypt.org/documents/LE-SA-v1.4-April-3-2024.pdf": true
        "acme-agreement:https://letsencrypt.org/documents/LE-SA-v1.5-February-24-2025.pdf": true
    - require:
      - pkg: chatmail-tls-acme-pkgs-installed

chatmail-tls-acme-hook-file-managed:
  file.managed:
    - name: /etc/acme/hooks/chatmail-reload
    - source: salt://{{ tpldir }}/files/acme-hook.sh
    - makedirs: true
    - mode: "0755"

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
