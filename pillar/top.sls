# Each minion gets pillar/hosts/<minion id>.sls (dots in the id become "_").
# Pillar is never served through the file server: it reaches only its minion.
base:
  '*':
    - ignore_missing: true
    - hosts.{{ grains['id'] | replace('.', '_') }}
