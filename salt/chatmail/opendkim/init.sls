# OpenDKIM signs mail that leaves through the outgoing reinject listener.
include:
  - .package
  - .config
  - .service
