{#- Stop the exporters and remove what chatmail.metrics wrote (the Debian
    packages stay installed, switched off). #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/metrics/map.jinja" import metrics_dir, config_dir, systemd_dir, timers with context %}

{%- for name in timers %}

chatmail-metrics-{{ name }}-timer-dead:
  service.dead:
    - name: {{ name }}.timer
    - enable: false
{%- endfor %}

chatmail-metrics-services-dead:
  service.dead:
    - names:
      - chatmail-mtail
      - prometheus-node-exporter
      - prometheus-postfix-exporter
    - enable: false

chatmail-metrics-clean-files-absent:
  file.absent:
    - names:
      - {{ systemd_dir }}/chatmail-mtail.service
{%- for name in timers %}
      - {{ systemd_dir }}/{{ name }}.service
      - {{ systemd_dir }}/{{ name }}.timer
{%- endfor %}
      - {{ config_dir }}/mtail
      - {{ config_dir }}/metrics-targets.json
      - {{ config_dir }}/metrics-status.json
      - {{ metrics_dir }}
    - require:
      - service: chatmail-metrics-services-dead
{%- for name in timers %}
      - service: chatmail-metrics-{{ name }}-timer-dead
{%- endfor %}

chatmail-metrics-clean-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-metrics-clean-files-absent
