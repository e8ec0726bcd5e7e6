base:
  '*':
    - chatmail
  # the fleet's Prometheus on the host whose pillar switches it on
  'I@fleet:prometheus:enabled:True':
    - match: compound
    - fleet.prometheus
