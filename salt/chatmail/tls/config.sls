{#- Per domain certificate, one SLS per tls mode: self.sls (self-signed,
    created once, never regenerated), ca.sls (issued on the host by the
    pillar CA chatmail:tls_ca with Salt's x509 states; reissued when it nears
    expiry or the CA changes), acme.sls (acmetool desired file; issued by
    acmetool reconcile) or external.sls (files provided by the operator;
    watched by a systemd path unit).  Each is included only when a domain
    uses its mode.  Extra trusted CAs (chatmail:trusted_cas) go into the
    system trust store (trust.sls). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set paths = chatmail.lookup.paths %}
{%- set modes = chatmail.domains.values() | map(attribute='tls') | map(attribute='mode') | list %}

include:
  - .trust
{%- for mode in ['self', 'ca', 'acme', 'external'] if mode in modes %}
  - .{{ mode }}
{%- endfor %}

chatmail-tls-directory:
  file.directory:
    - name: {{ paths.tls_dir }}
    - user: root
    - group: root
    - mode: "0755"
    - makedirs: true
{%- if 'ca' not in modes %}

chatmail-tls-ca-directory-absent:
  file.absent:
    - name: {{ paths.tls_dir }}/ca
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
