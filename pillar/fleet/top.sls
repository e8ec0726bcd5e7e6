# Fleet pillar environment (master.d/chatmail.conf: pillar_roots "fleet"):
# the highstate schedule and the mine functions, the same for every minion.
fleet:
  '*':
    - schedule
    - mine
