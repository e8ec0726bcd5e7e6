{#- Prometheus metrics of the relay (docs/fleet-operations.md); with
    chatmail:metrics:enabled false the same include removes them again. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
include:
{%- if chatmail.metrics.enabled %}
  - .package
  - .config
  - .service
{%- else %}
  - .clean
{%- endif %}
