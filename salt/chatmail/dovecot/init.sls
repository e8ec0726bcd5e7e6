# Dovecot: IMAP for clients, LMTP delivery for postfix, SASL for postfix,
# accounts from doveauth, quota, last-login, METADATA and push via chatmaild.
include:
  - .package
  - .config
  - .service
