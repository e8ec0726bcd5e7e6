# kitchen suite external-tls: a certificate provided by the operator
# (tests/kitchen/external-cert.sh puts it in place before the highstate)
chatmail:
  domains:
    ext.test:
      tls:
        mode: external
        cert: /etc/ssl/chatmail-external/ext.test/fullchain.pem
        key: /etc/ssl/chatmail-external/ext.test/privkey.pem
  params:
    # test hosts share the CI machine's load average: do not refuse accounts
    max_load_1m: 1000
