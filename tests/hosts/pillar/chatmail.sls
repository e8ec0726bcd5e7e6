# Pillar of the relay host converged by the host tests: two self-signed domains.
chatmail:
  domains:
    chat1.test: {}
    _chat2.test:
      max_mailbox_size: 100M
