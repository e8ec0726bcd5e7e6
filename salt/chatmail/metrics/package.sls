{#- Debian's exporters and mtail.  Their settings files are written before
    the packages are installed (dpkg keeps them: salt installs with
    --force-confold), so no exporter ever starts listening on every address. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/metrics/map.jinja" import targets, metrics_dir with context %}

chatmail-metrics-node-exporter-default-file-managed:
  file.managed:
    - name: /etc/default/prometheus-node-exporter
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail.metrics)
        ARGS="--web.listen-address={{ targets.node }} --collector.textfile.directory={{ metrics_dir }}"

chatmail-metrics-postfix-exporter-default-file-managed:
  file.managed:
    - name: /etc/default/prometheus-postfix-exporter
    - mode: "0644"
    - contents: |
        # Managed by Salt (chatmail.metrics).  Only the queue (showq) is read
        # here: the relay keeps no mail.log, the log counters come from mtail.
        ARGS="--web.listen-address={{ targets.postfix }} --postfix.logfile_path=/dev/null"

chatmail-metrics-pkgs-installed:
  pkg.installed:
    - pkgs: {{ chatmail.lookup.pkgs.metrics | json }}
    - install_recommends: false
    - require:
      - file: chatmail-metrics-node-exporter-default-file-managed
      - file: chatmail-metrics-postfix-exporter-default-file-managed
