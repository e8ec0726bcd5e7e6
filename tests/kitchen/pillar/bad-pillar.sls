# kitchen suite bad-pillar: an unknown key and a wrong type must stop the
# highstate before any change, naming the keys
chatmail:
  domains:
    bad.test:
      max_mailbox_size: [not, a, size]
  params:
    no_such_setting: 1
