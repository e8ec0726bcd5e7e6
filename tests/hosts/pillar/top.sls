base:
  '*':
    - chatmail
