{#- Minion bootstrap for the chatmail fleet: point the minion at the master
    and keep it running.  The schedule and mine functions come from the
    fleet pillar (pillar/fleet), not from this state.

    First run on a new relay (masterless, from a checkout of this repo):
      salt-call --local --file-root=/srv/chatmail-salt/salt state.apply fleet \
        pillar='fleet: {master: salt.example.org}'
    then accept its key on the master: salt-key -a <minion id> #}
{%- import_yaml "fleet/defaults.yaml" as defaults %}
{%- set fleet = salt['slsutil.merge'](defaults.fleet, salt['pillar.get']('fleet', {}), strategy='recurse') %}

{#- The DNS check the mine publishes (chatmail_dns.status) needs dnspython. #}
chatmail-fleet-pkgs-installed:
  pkg.installed:
    - pkgs: {{ fleet.pkgs | json }}

chatmail-fleet-minion-config-file-managed:
  file.managed:
    - name: {{ fleet.conf_file }}
    - source: salt://fleet/files/minion.conf.jinja
    - template: jinja
    - makedirs: true
    - mode: "0644"
    - context:
        fleet: {{ fleet | json }}
{%- if fleet.manage_unit %}

chatmail-fleet-minion-unit-file-managed:
  file.managed:
    - name: {{ fleet.unit_file }}
    - source: salt://fleet/files/salt-minion.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        fleet: {{ fleet | json }}

chatmail-fleet-minion-unit-daemon-reload:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-fleet-minion-unit-file-managed
    - require_in:
      - service: chatmail-fleet-minion-service-running
{%- endif %}

{#- A minion that is already running (this state applied through it) picks
    up a changed config by a delayed restart: restarting it from inside its
    own run would kill the run.  On bootstrap it is simply started. #}
{%- set was_running = salt['service.status']('salt-minion') %}

chatmail-fleet-minion-service-running:
  service.running:
    - name: salt-minion
    - enable: true
    - require:
      - file: chatmail-fleet-minion-config-file-managed

{%- if was_running %}

{#- cmd.run: a minion cannot restart itself inside its own run (service.running
    would kill the run); systemd restarts it 5 s after the run ends. #}
chatmail-fleet-minion-restart-cmd-run:
  cmd.run:
    - name: systemd-run --on-active=5 --unit=chatmail-fleet-minion-restart systemctl restart salt-minion
    - onchanges:
      - file: chatmail-fleet-minion-config-file-managed
    - require:
      - service: chatmail-fleet-minion-service-running
{%- endif %}
