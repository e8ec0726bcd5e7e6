# Pillar of the relay host converged by the host tests: two self-signed domains.
chatmail:
  params:
    # test hosts see the load average of the shared CI machine, not their own
    max_load_1m: 100
    # exactly once per mailbox (off by default; test_relay.py's dedupe tests)
    dedupe_period: 86400
  domains:
    chat1.test: {}
    _chat2.test:
      max_mailbox_size: 100M
      # chatmail/relay's keys (test_relay.py): the operator's own pages from
      # tests/hosts/data/compat-www and an iroh relay advertised in METADATA
      www_folder: salt://compat-www
      iroh_relay: https://iroh.chat2.test
  # hibernate IDLE sessions after 2 s instead of the default 60 s, so that
  # the hibernation tests (test_relay.py) do not wait a minute per session
  imap:
    hibernate_timeout: 2
  # the echobot (echo@chat1.test, echo@_chat2.test; test_echobot.py), its
  # packages from the wheels made for requirements-dev.txt (conftest.py
  # mounts them at /wheels): test hosts have no way to PyPI
  echobot:
    enabled: true
  lookup:
    pip:
      args: --no-index --find-links=/wheels
