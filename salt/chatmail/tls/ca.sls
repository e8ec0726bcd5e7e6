{#- tls mode ca: the pillar CA chatmail:tls_ca on the host, and per domain a
    certificate it issues with Salt's x509 states, reissued when it nears
    expiry or the CA changes (included by config.sls when a domain uses the
    mode). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set ca_dir = paths.tls_dir ~ '/ca' %}
{%- for domain in chatmail.domain_list if chatmail.domains[domain].tls.mode == 'ca' %}
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
{%- endfor %}

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
