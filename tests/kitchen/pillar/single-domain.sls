# kitchen suite single-domain: one self-signed domain
chatmail:
  domains:
    single.test: {}
  params:
    # test hosts share the CI machine's load average: do not refuse accounts
    max_load_1m: 1000
