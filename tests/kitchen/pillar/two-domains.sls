# kitchen suite two-domains: two domains on one host, one with its own limits
chatmail:
  domains:
    one.test: {}
    _two.test:
      max_mailbox_size: 100M
      username_min_length: 8
  params:
    # test hosts share the CI machine's load average: do not refuse accounts
    max_load_1m: 1000
