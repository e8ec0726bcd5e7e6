# Postfix: SMTP on 25 (other relays), 587/465 (clients), reinject listeners
# for filtermail, LMTP delivery to dovecot.
include:
  - .package
  - .config
  - .service
