{#- One vhost file per domain (SNI), the web pages, autoconfig, MTA-STS
    policy and the account QR code.  nginx -t runs on every config change and
    the reload requires it, so a broken config is never loaded. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set www = chatmail.lookup.paths.www_root %}

include:
  - {{ tplroot }}.tls

chatmail-nginx-pkgs-installed:
  pkg.installed:
    - pkgs: {{ (chatmail.lookup.pkgs.nginx + chatmail.lookup.pkgs.web) | json }}

chatmail-nginx-http-conf-file-managed:
  file.managed:
    - name: /etc/nginx/conf.d/chatmail.conf
    - source: salt://{{ tpldir }}/files/chatmail-http.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
    - require:
      - pkg: chatmail-nginx-pkgs-installed

{#- 443: ALPN multiplexing of HTTPS, IMAP and SMTP (chatmail:alpn). #}
chatmail-nginx-stream-conf-file-managed:
{%- if chatmail.alpn.enabled %}
  file.managed:
    - name: /etc/nginx/modules-enabled/99-chatmail-stream.conf
    - source: salt://{{ tpldir }}/files/stream.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
{%- else %}
  file.absent:
    - name: /etc/nginx/modules-enabled/99-chatmail-stream.conf
{%- endif %}
    - require:
      - pkg: chatmail-nginx-pkgs-installed

chatmail-nginx-default-site-file-absent:
  file.absent:
    - name: /etc/nginx/sites-enabled/default
    - require:
      - pkg: chatmail-nginx-pkgs-installed

{%- for domain in chatmail.domain_list %}
{%-   set d = chatmail.domains[domain] %}
{#-   acme: the tls states order the certificate before this vhost is
      written; should that have failed, the vhost serves http only (port 80
      keeps answering acmetool's challenges for the timer's next attempt).
      The template decides when the state runs (https: null), not when this
      file is rendered, before the certificate exists. #}
{%-   set https = none if d.tls.mode == 'acme' else true %}

chatmail-nginx-{{ domain }}-vhost-file-managed:
  file.managed:
    - name: /etc/nginx/sites-enabled/chatmail-{{ domain }}.conf
    - source: salt://{{ tpldir }}/files/vhost.conf.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        domain: {{ domain }}
        https: {{ https | json }}
    - require:
      - pkg: chatmail-nginx-pkgs-installed
      - sls: {{ tplroot }}.tls

chatmail-nginx-{{ domain }}-www-directory:
  file.directory:
    - name: {{ www }}/{{ domain }}
    - mode: "0755"
    - makedirs: true

{#-   www_folder (d.www.mode): the generated pages (with their style sheet
      and QR code script), none (disabled), the operator's salt:// directory
      copied over the web root, or a host directory the vhost serves instead
      (path).  Whatever an earlier mode left in the web root goes (see the
      www-cleaned state below). #}
{%-   set kept = [] %}
{%-   if d.www.mode == 'generated' %}
{%-     for page in ['index', 'info', 'privacy'] %}
{%-       do kept.append('chatmail-nginx-' ~ domain ~ '-' ~ page ~ '-page-file-managed') %}

chatmail-nginx-{{ domain }}-{{ page }}-page-file-managed:
  file.managed:
    - name: {{ www }}/{{ domain }}/{{ page }}.html
    - source: salt://{{ tpldir }}/files/page.html.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        domain: {{ domain }}
        page: {{ page }}
    - require:
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-     endfor %}
{%-     for asset in ['chatmail.css', 'qr.js'] %}
{%-       do kept.append('chatmail-nginx-' ~ domain ~ '-' ~ asset ~ '-file-managed') %}

chatmail-nginx-{{ domain }}-{{ asset }}-file-managed:
  file.managed:
    - name: {{ www }}/{{ domain }}/{{ asset }}
    - source: salt://{{ tpldir }}/files/{{ asset }}
    - mode: "0644"
    - require:
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-     endfor %}
{%-   elif d.www.mode == 'salt' %}
{%-     do kept.append('chatmail-nginx-' ~ domain ~ '-www-folder-recursed') %}

{#-   the operator's files; generated files of the same name are replaced #}
chatmail-nginx-{{ domain }}-www-folder-recursed:
  file.recurse:
    - name: {{ www }}/{{ domain }}
    - source: {{ d.www.source }}
    - clean: false
    - dir_mode: "0755"
    - file_mode: "0644"
    - include_empty: true
    - require:
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-   endif %}
{%-   do kept.append('chatmail-nginx-' ~ domain ~ '-autoconfig-file-managed') %}

chatmail-nginx-{{ domain }}-autoconfig-file-managed:
  file.managed:
    - name: {{ www }}/{{ domain }}/autoconfig.xml
    - source: salt://{{ tpldir }}/files/autoconfig.xml.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        domain: {{ domain }}
    - require:
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-   if not d.is_ip %}
{%-     do kept.append('chatmail-nginx-' ~ domain ~ '-mta-sts-file-managed') %}

chatmail-nginx-{{ domain }}-mta-sts-file-managed:
  file.managed:
    - name: {{ www }}/{{ domain }}/.well-known/mta-sts.txt
    - contents: {{ salt['chatmail_dns.mta_sts_policy'](domain, max_age=d.mta_sts.max_age) | json }}
    - contents_newline: false
    - makedirs: true
    - mode: "0644"
    - require:
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-   endif %}

{%-   if not d.is_ip %}

{#- cmd.run: no Salt state draws a QR code; made once (creates). #}
chatmail-nginx-{{ domain }}-qr-cmd-run:
  cmd.run:
    - name: >-
        qrencode -t SVG -m 2 -o '{{ www }}/{{ domain }}/qr-chatmail-invite.svg'
        'DCACCOUNT:https://{{ domain }}/new'
    - creates: {{ www }}/{{ domain }}/qr-chatmail-invite.svg
    - require:
      - pkg: chatmail-nginx-pkgs-installed
      - file: chatmail-nginx-{{ domain }}-www-directory
{%-   endif %}

{#-   The web root holds only what this run manages (the states in `kept`)
      and the QR code (made once by qrencode): a page of an earlier
      www_folder mode, or a file since removed from the operator's salt://
      folder, goes.  Files written by hand into the web root go too: use
      www_folder for your own files. #}
chatmail-nginx-{{ domain }}-www-cleaned:
  file.directory:
    - name: {{ www }}/{{ domain }}
    - clean: true
    - exclude_pat: 'E@^qr-chatmail-invite\.svg$'
    - require:
{%-   for sid in kept %}
      - file: {{ sid }}
{%-   endfor %}
{%- endfor %}

{#- A domain removed from the pillar loses its vhost and its web directory
    on the next run (nginx -t, then reload, see service.sls via watch_in).
    Only chatmail-<domain>.conf vhosts and <www_root>/<domain> directories of
    domains no longer listed are touched.  Mailboxes and DKIM keys are data
    and are never removed here: re-adding the domain finds them again. #}
{%- set vhosts = [] %}
{%- for domain in chatmail.domain_list %}
{%-   do vhosts.append('chatmail-' ~ domain ~ '.conf') %}
{%- endfor %}

chatmail-nginx-stale-vhosts-pruned:
  chatmail_files.pruned:
    - name: /etc/nginx/sites-enabled
    - match: 'chatmail-*.conf'
    - keep: {{ vhosts | json }}
    - onchanges_in:
      - cmd: chatmail-nginx-config-test-cmd-run
    - watch_in:
      - service: chatmail-nginx-service-running

chatmail-nginx-stale-www-directories-pruned:
  chatmail_files.pruned:
    - name: {{ www }}
    - kind: dir
    - keep: {{ chatmail.domain_list | json }}
