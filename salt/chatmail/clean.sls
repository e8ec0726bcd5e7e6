# Undo the relay in reverse order (mailboxes, DKIM keys and certificates are
# data and stay unless their component's clean removes them explicitly).
include:
  - .metrics.clean
  - .echobot.clean
  - .dns.clean
  - .nginx.clean
  - .postfix.clean
  - .dovecot.clean
  - .opendkim.clean
  - .chatmaild.clean
  - .tls.clean
  - .base.clean
