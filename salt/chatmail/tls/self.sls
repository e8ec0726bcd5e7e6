{#- tls mode self: a self-signed certificate per domain, made once and
    never regenerated (included by config.sls when a domain uses the mode). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'self' %}
{%-   set d = chatmail.domains[domain] %}
{%-   if d.is_ip %}
{%-     set san = 'IP:' ~ domain %}
{%-   else %}
{%-     set san = 'DNS:' ~ domain ~ ',DNS:mta-sts.' ~ domain ~ ',DNS:www.' ~ domain %}
{%-   endif %}

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
{%- endfor %}
