# The whole relay.  validate comes first: it renders the merged map, so a bad
# pillar fails here (and in every other SLS) before any state runs.
include:
  - .validate
  - .base
  - .tls
  # where apt takes Dovecot from, before chatmaild's packages pull in dovecot-core
  - .dovecot.repo
  - .chatmaild
  - .opendkim
  - .dovecot
  - .postfix
  - .nginx
  - .turn
  - .echobot
  - .dns
  - .metrics
