# Each minion gets pillar/hosts/<minion id>.sls (dots in the id become "_").
# opts["id"] is the id the master authenticated; grains are set by the minion
# itself and could name another host.
# Pillar is never served through the file server: it reaches only its minion.
base:
  '*':
    - ignore_missing: true
    - hosts.{{ opts['id'] | replace('.', '_') }}
