# Example pillar of one chatmail relay serving two domains.  Every key is
# shown; values are the defaults unless marked "example".  Only
# chatmail:domains is required.  This file is identical to
# pillar/hosts/example.sls (a unit test keeps them equal and compares the
# rendered map with tests/unit/mapdata/example.yaml).
# A bad value fails the whole highstate before any change, naming the key.
chatmail:
  # Domain whose certificate is the default (no SNI) certificate of postfix
  # and dovecot.  Empty: the first domain in sorted order.
  primary: chat.example.org     # example

  # Chatmail domains served by this host (example).  Each value may override
  # the per-domain chatmaild params (marked "per domain" below) and the keys
  # of domain_defaults.  An IPv4 address as domain makes an IP-only relay
  # (addresses user@[1.2.3.4], self-signed TLS, no DNS).
  domains:
    chat.example.org:
      tls:
        mode: acme
      acme_email: admin@example.org
      privacy_mail: privacy@example.org
      dns:
        ipv4: 192.0.2.10
        tlsrpt: tlsrpt@example.org
    _test.example.org:
      max_mailbox_size: 100M
      delete_mails_after: 10
      dns:
        ipv4: 192.0.2.10

  # Defaults for every domain (may be overridden below domains:<domain>).
  domain_defaults:
    tls:
      # auto: self for domains starting with "_", ending in ".test" and IPs;
      # acme otherwise.  acme: acmetool + Let's Encrypt.  self: self-signed.
      # ca: issued on the host by the private CA chatmail:tls_ca (below).
      # external: cert/key are files placed on the host by other means;
      # services reload when they change.
      mode: auto
      cert: ''
      key: ''
    dkim:
      selector: opendkim        # key: <dkim_dir>/<domain>.<selector>.private
    mta_sts:
      max_age: 2419200          # seconds, in /.well-known/mta-sts.txt
    dns:
      ipv4: ''                  # A record; empty: the host's first non-loopback IPv4
      ipv6: ''                  # AAAA record; empty: the host's first public IPv6, if any
      tlsrpt: ''                # TLS-RPT report address; empty: no record
      caa: true                 # CAA record allowing letsencrypt.org (acme mode)
    web:
      title: ''                 # web page title; empty: the domain

  # chatmaild [params] (names as in chatmail/relay's chatmail.ini); keys
  # marked "per domain" may also be set below chatmail:domains:<domain>.
  # --- params: generated from chatmaild/src/chatmaild/params.json (./cmsalt docs)
  params:
    # per domain; mails a user may send per minute, on average (0: no limit)
    max_user_send_per_minute: 60
    # per domain; mails a user may send at once before the per-minute rate applies
    max_user_send_burst_size: 10
    # per domain; quota of a mailbox; the oldest mail (older than a day) goes first when it fills
    max_mailbox_size: 500M
    # largest message in bytes (SMTP SIZE, Dovecot quota_max_mail_size, the web page)
    max_message_size: 31457280
    # per domain; days after which every message is deleted
    delete_mails_after: 20
    # per domain; days after which messages larger than 200 kB are deleted
    delete_large_after: 7
    # per domain; days without a login after which an account and its mail are deleted
    delete_inactive_users_after: 90
    # per domain; shortest localpart an account may be created with
    username_min_length: 9
    # per domain; longest localpart an account may be created with
    username_max_length: 9
    # per domain; shortest password an account may be created with
    password_min_length: 9
    # per domain; addresses (or @domain) that may send cleartext (an extension: chatmail/relay dropped this key; empty by default)
    passthrough_senders: []
    # per domain; addresses (or @domain) that may receive cleartext from this relay's users (an extension: chatmail/relay dropped this key; empty by default, no echo@ address)
    passthrough_recipients: []
    # 127.0.0.1 port of filtermail outgoing (Postfix's smtpd_proxy_filter for submission)
    filtermail_smtp_port: 10080
    # 127.0.0.1 port of filtermail incoming (for port 25)
    filtermail_smtp_port_incoming: 10081
    # 127.0.0.1 port where filtermail outgoing hands checked mail back to Postfix
    postfix_reinject_port: 10025
    # 127.0.0.1 port where filtermail incoming hands checked mail back to Postfix
    postfix_reinject_port_incoming: 10026
    # refuse incoming mail without a valid DKIM signature aligned with From:
    filtermail_dkim_check: true
    # seconds of DNS lookups (DKIM keys) one incoming message may take; then 451 (Postfix's proxy timeout must stay above it)
    filtermail_dkim_dns_budget: 10.0
    # mailboxes live in <mailboxes_dir>/<domain>/<address>/
    mailboxes_dir: /home/vmail/mail
    # state of the daemons (push queue)
    state_dir: /var/lib/chatmaild
    # while this file exists no account is created (existing ones keep working)
    nocreate_file: /etc/chatmail-nocreate
    # no account is created while the 1-minute load average is above this
    max_load_1m: 5
    # no account is created while less memory than this is available
    min_available_memory: 200M
    # no account is created while the mailbox filesystem has less free space than this
    min_free_disk_space: 1G
    # concurrent IMAP connections (Dovecot's imap process limit)
    max_imap_connections: 10000
    # concurrent SMTP connections per submission port (Postfix's process limit)
    max_smtp_connections: 1000
    # recipients per message; advertised to clients as maxsmtprecipients
    max_smtp_recipients: 1000
    # seconds a mailbox remembers a delivered message by its From address and Message-ID: another copy within this time (a sender retrying after a refused transaction) is dropped, so it is stored once; 0 (the default): off, because LMTP's Sieve plugin writes a copy per recipient instead of hard links (docs/dovecot.md); 86400 is a day
    dedupe_period: 0
    # where push notification requests go
    push_notification_url: https://notifications.delta.chat/notify
    # days after which a device token that was not renewed is forgotten
    push_token_expiry_days: 90
    # how long a failing push request is retried
    push_retry_max_seconds: 3600
    # per domain; TURN server host[:port] handed to clients with time-limited credentials (empty: none; with chatmail:turn:enabled the tree sets the domain itself, the relay's own coturn)
    turn_server: ''
    # per domain; the TURN server's shared secret (REST API) for those credentials
    turn_secret: ''
    # per domain; 'CERT_PATH KEY_PATH': certificate chain and key files on the host, managed outside the relay (tls mode external, as chatmail:domains:<d>:tls:mode external with cert and key)
    tls_external_cert_and_key: ''
    # per domain; the domain's own web pages instead of the generated home/info/privacy pages: a directory on the relay host (absolute path) or a salt:// directory, served as the web root; 'disabled': no pages (/new, autoconfig and MTA-STS stay)
    www_folder: ''
    # listen on IPv4 only
    disable_ipv6: false
    # per domain; contact address of the ACME (Let's Encrypt) account
    acme_email: ''
    # the daemons write their counters to <metrics_dir>/<daemon>.prom (Prometheus text files, read by the node exporter of chatmail:metrics); empty or a missing directory: no export
    metrics_dir: /var/lib/chatmail-metrics
    # address the metrics exporters listen on (mtail on port 3903 as in chatmail/relay); sets chatmail:metrics:listen_address where the metrics component is present; empty: loopback
    mtail_address: ''
    # per domain; URL of an iroh relay (one the operator runs or trusts) advertised to clients as METADATA /shared/vendor/deltachat/irohrelay; empty: none advertised, clients use their default (this tree runs no iroh relay itself)
    iroh_relay: ''
    # log every IMAP session's protocol to files in the mailbox (debugging only)
    imap_rawlog: false
    # offer IMAP COMPRESS (keeps sessions from hibernating)
    imap_compress: false
    # per domain; postal address of the operator, shown on the privacy page
    privacy_postal: ''
    # per domain; contact address of the operator, shown on the privacy page
    privacy_mail: ''
    # per domain; data protection officer, shown on the privacy page
    privacy_pdo: ''
    # per domain; supervisory authority, shown on the privacy page
    privacy_supervisor: ''
  # --- end of params

  # Private CA for domains in tls mode "ca": the host issues each such
  # domain a certificate (SANs: domain, mta-sts.<domain>, www.<domain>) into
  # <tls_dir>/<domain>/fullchain.pem + privkey.pem, and reissues it when
  # fewer than days_remaining days are left or the CA changes.  PEM strings
  # (example: a YAML block scalar "cert: |" followed by the PEM lines); the
  # certificate must be a CA (basicConstraints CA:TRUE), the key unencrypted.
  # The key is written to <tls_dir>/ca/ca.key (0600) only.
  tls_ca:
    cert: ''
    key: ''
    days_valid: 365
    days_remaining: 30

  # Domains in tls mode "acme": acmetool orders one certificate per domain
  # (SANs: domain, mta-sts.<domain>, www.<domain>) from this RFC 8555
  # directory during the highstate, answering the http-01 challenge on
  # port 80 (nginx, or acmetool itself before nginx is installed), so the
  # domain's A/AAAA records must point at the host first.  acmetool.timer
  # renews twice a day; the acmetool hook reloads postfix, dovecot and nginx.
  # directory: "letsencrypt", "letsencrypt-staging" (untrusted test
  # certificates, no rate limits) or the https URL of any ACME directory.
  # terms_agreed: the terms-of-service URLs you agree to; the registration
  # fails (naming the URL in acmetool's log) when the CA asks for another.
  acme:
    directory: letsencrypt
    terms_agreed:
      - https://letsencrypt.org/documents/LE-SA-v1.4-April-3-2024.pdf
      - https://letsencrypt.org/documents/LE-SA-v1.5-February-24-2025.pdf

  # PEM certificates the host trusts in addition to the system CAs (e.g. the
  # private CA of the other relays of a test fleet), installed as
  # /usr/local/share/ca-certificates/chatmail-<n>.crt.
  trusted_cas: []

  # Outgoing SMTP verifies every peer's certificate ("verify") except for
  # these next hops, which are only encrypted: "[ip]" (IP literals),
  # "*.suffix", "prefix*" or a domain.  A fleet whose relays all have
  # verifiable certificates (e.g. tls mode ca + trusted_cas) sets [].
  smtp_tls:
    unverified_nexthops: ['_*', '*.test', '[ip]']

  limits:
    imap_max_userip_connections: 20      # concurrent IMAP connections per account and IP
    imap_login_rate_per_minute: 60       # new IMAP connections per client IP and minute
    login_failures_per_account_and_ip: 5  # failed IMAP/SMTP logins of one address from one IP,
    login_failures_per_ip: 20            # or of any addresses from one IP, brake further
    login_failure_window: 600            # logins for this many seconds (temporary error)
    new_account_rate_per_minute: 20      # POST /new per client IP (nginx limit_req, 429)
    new_account_burst: 10
    smtp_connection_rate_per_minute: 60  # new SMTP connections per client IP and minute
    smtp_max_connections_per_client: 100
    queue_lifetime: 5d                   # postfix maximal_queue_lifetime
    queue_retry: 300s                    # first retry of deferred mail (postfix minimal_backoff_time, queue_run_delay)

  dns:
    check: warn          # off | warn | fail: gate the highstate on the live DNS check
    nameservers: []      # query these instead of the domain's authoritative servers
    forwarders: []       # unbound forwards every query to these IPs (empty: full recursion)
    manage_resolv_conf: true  # point /etc/resolv.conf at the local unbound once it runs

  # Which Dovecot the relay runs (docs/dovecot.md).
  #   patched: Debian's own dovecot source package rebuilt with one patch that
  #            removes Dovecot 2.3's 500 ms delay before a client in IMAP IDLE
  #            hears of new mail (./cmsalt build-dovecot builds it), installed
  #            from a local apt repository and pinned, so apt never replaces it
  #            with Debian's; chatmail_status.report flags it once Debian has
  #            a newer dovecot (rebuild then).
  #   debian:  Debian's packages as they are: new mail reaches IDLE ~0.5 s late.
  # archive (patched): where the build's chatmail-dovecot.tar comes from:
  #   salt://chatmail-dovecot/chatmail-dovecot.tar  a master that ran
  #       ./cmsalt build-dovecot serves it to every minion (the default; salt
  #       verifies what it serves);
  #   /srv/chatmail-dovecot.tar       a path on the host (masterless);
  #   https://example.org/chatmail-dovecot.tar  a download, with sha256.
  # sha256: the archive's sha256 (build-dovecot prints it); required for a URL.
  dovecot:
    source: patched
    archive: salt://chatmail-dovecot/chatmail-dovecot.tar
    sha256: ''

  # IMAP IDLE sessions are handed to Dovecot's imap-hibernate process after
  # this many seconds, which frees their imap processes (about 1 MiB each,
  # docs/dovecot.md) while the hibernate process keeps watching the mailbox
  # and wakes the session on new mail (that costs a few ms more than a live
  # session, so sessions of an ongoing chat stay live).  Below 120: Dovecot's
  # IDLE keepalive every 2 minutes restarts the wait.  Only with dovecot:source
  # patched: Debian's Dovecot drops a new-mail notice that is pending in its
  # 500 ms delay when the session is handed over.  0 keeps sessions live;
  # params.imap_compress also prevents it.
  imap:
    hibernate_timeout: 60

  journald:
    max_retention: 2day  # journald MaxRetentionSec (logs are kept in memory only)

  # Prometheus metrics of this relay (docs/fleet-operations.md): Debian's
  # node exporter (system, plus the chatmaild counters, fsreport and status
  # text files in params:metrics_dir), postfix exporter (queue), mtail on the
  # journal (deliveries, deferrals) and Dovecot's stats endpoint (logins).
  # Each listens on listen_address only; nothing is public unless a fleet
  # Prometheus needs it (then name an address only it can reach).
  metrics:
    enabled: true
    listen_address: 127.0.0.1
    ports:
      node: 9100
      postfix: 9154
      mtail: 3903
      dovecot: 9900
    fsreport_interval: 15min   # accounts, activity, storage (systemd time span)
    status_interval: 10min     # certificate expiry, DNS check, services
    public: false              # https://<domain>/metrics: that domain's account total only

  # Port 443 for restrictive networks (docs/calls-and-ports.md): nginx's
  # stream module hands TLS connections with ALPN "imap" to Dovecot, "smtp" to
  # Postfix (as on 465) and everything else to the web server, each on a
  # loopback port of its own with the client's address in a PROXY header.
  # enabled false: the web server listens on 443 itself.
  alpn:
    enabled: true
    ports:
      https: 8443
      imap: 10993
      smtp: 10465

  # The relay's own TURN server for calls (Debian's coturn,
  # docs/calls-and-ports.md).  Delta Chat gets time-limited credentials from
  # METADATA /shared/vendor/deltachat/turn, made with a secret generated on
  # the host (or params/domains turn_secret); turn_server defaults to the
  # domain.  Open port/tls_port (UDP+TCP) and the UDP range min..max_port.
  turn:
    enabled: true
    port: 3478
    tls_port: 5349
    min_port: 49152
    max_port: 65535
    user_quota: 12        # concurrent allocations per credential
    total_quota: 1200     # concurrent allocations on the host
    max_bps: 0            # bytes/s per session (0: no limit)
    # peers no client may reach through the relay (coturn denied-peer-ip)
    denied_peers: [0.0.0.0/8, 10.0.0.0/8, 100.64.0.0/10, 127.0.0.0/8, 169.254.0.0/16,
                   172.16.0.0/12, 192.0.0.0/24, 192.168.0.0/16, 198.18.0.0/15, 224.0.0.0/4,
                   240.0.0.0/4, "::1/128", "::ffff:0:0/96", "64:ff9b::/96",
                   "fc00::/7", "fe80::/10", "ff00::/8"]
    allowed_peers: []     # exceptions from denied_peers, e.g. [192.168.10.0/24]

  # echo@<domain>: a Delta Chat bot on the relay that sends every message
  # back, encrypted (docs/calls-and-ports.md); users reach it by its invite
  # link, /run/chatmail-echobot/<domain>.txt.  Its packages come from PyPI
  # (or the wheelhouse lookup:pip:args names); its passwords are generated
  # on the host.
  echobot:
    enabled: false
    domains: []           # the domains that get one (empty: every domain)
    version: 2.65.0       # of deltachat-rpc-client and deltachat-rpc-server
    memory_max: 512M      # MemoryMax of its unit

  # Thresholds of the on-demand health check: salt-call state.apply chatmail.status
  status:
    days_left: 14         # a certificate (served or on disk) expiring sooner is a problem
    max_disk_percent: 90  # a mailbox filesystem fuller than this is a problem

  # !!! BENCHMARKS AND TESTS ONLY -- NEVER ON A RELAY IN SERVICE !!!
  # filtermail_bypass: true makes Postfix submission (ports 587 and 465) hand
  # mail straight to cleanup instead of through filtermail, so nothing checks
  # any more that outgoing mail is encrypted: CLEARTEXT MAIL LEAVES THE RELAY
  # and the relay stops being a chatmail relay.  It exists only so that
  # bench/bench_e2e.py can show filtermail's share of the delivery latency.
  # Port 25 (incoming) keeps its filter.
  testing:
    filtermail_bypass: false

  # Distribution specifics; override only for unusual hosts.
  lookup:
    pkgs:
      postfix: [postfix]
      dovecot: [dovecot-imapd, dovecot-lmtpd, dovecot-auth-lua, dovecot-sieve, lua-json]
      dovecot_build: [dovecot-core, dovecot-imapd, dovecot-lmtpd, dovecot-auth-lua, dovecot-sieve]  # a patched build's packages
      opendkim: [opendkim, opendkim-tools]
      nginx: [nginx, libnginx-mod-stream]
      unbound: [unbound]
      chatmaild: [python3, python3-venv, python3-setuptools, python3-wheel, python3-aiosmtpd, python3-dkim, python3-dnspython, dovecot-core]
      base: [ca-certificates, openssl, cron]
      fcgiwrap: [fcgiwrap]
      web: [qrencode]
      acme: [acmetool]
      metrics: [prometheus-node-exporter, prometheus-postfix-exporter, mtail]
      turn: [coturn]
    paths:
      config_dir: /etc/chatmail
      secrets_dir: /etc/chatmail/secrets
      ini: /etc/chatmail/chatmail.ini
      venv: /usr/local/lib/chatmaild
      src_dir: /usr/local/src/chatmaild
      vmail_home: /home/vmail
      dkim_dir: /etc/dkimkeys
      tls_dir: /etc/chatmail/tls
      acme_dir: /var/lib/acme/live
      www_root: /var/www/chatmail
      zone_dir: /etc/chatmail/zones
      run_dir: /run/chatmail
      journald_dropin: /etc/systemd/journald.conf.d/chatmail.conf
      systemd_dir: /etc/systemd/system
      dovecot_repo: /var/lib/chatmail-dovecot  # the patched build's local apt repository
      echobot_dir: /usr/local/lib/chatmail-echobot  # the echobot's venv and script
    users:
      vmail: vmail
      config_group: chatmail
      metadata_group: chatmail-metadata
      echobot: echobot   # the echobot's system user
    sockets:
      doveauth: /run/doveauth/doveauth.socket
      metadata: /run/chatmail-metadata/metadata.socket
      lastlogin: /run/chatmail-lastlogin/lastlogin.socket
      newemail: /run/fcgiwrap.socket
    pip:
      args: ''           # extra pip arguments (chatmaild, echobot), e.g. --no-index --find-links=/wheels
