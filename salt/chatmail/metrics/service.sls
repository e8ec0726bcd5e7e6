{#- The exporters restart when their settings change; the timers feed the
    node exporter's text file directory. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/metrics/map.jinja" import timers with context %}

include:
  - .package
  - .config

chatmail-metrics-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-metrics-mtail-unit-file-managed
{%- for name in timers %}
      - file: chatmail-metrics-{{ name }}-unit-file-managed
      - file: chatmail-metrics-{{ name }}-timer-file-managed
{%- endfor %}

chatmail-metrics-node-exporter-service-running:
  service.running:
    - name: prometheus-node-exporter
    - enable: true
    - watch:
      - file: chatmail-metrics-node-exporter-default-file-managed
      - pkg: chatmail-metrics-pkgs-installed
    - require:
      - file: chatmail-metrics-directory

chatmail-metrics-postfix-exporter-service-running:
  service.running:
    - name: prometheus-postfix-exporter
    - enable: true
    - watch:
      - file: chatmail-metrics-postfix-exporter-default-file-managed
      - pkg: chatmail-metrics-pkgs-installed

chatmail-metrics-mtail-service-running:
  service.running:
    - name: chatmail-mtail
    - enable: true
    - watch:
      - file: chatmail-metrics-mtail-unit-file-managed
      - file: chatmail-metrics-mtail-program-file-managed
      - pkg: chatmail-metrics-pkgs-installed
    - require:
      - module: chatmail-metrics-daemon-reloaded

{%- for name in timers %}

chatmail-metrics-{{ name }}-timer-running:
  service.running:
    - name: {{ name }}.timer
    - enable: true
    - watch:
      - file: chatmail-metrics-{{ name }}-timer-file-managed
    - require:
      - module: chatmail-metrics-daemon-reloaded
      - file: chatmail-metrics-public-directory
{%- endfor %}
