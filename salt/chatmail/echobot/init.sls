{#- echo@<domain>: a Delta Chat bot that sends every message back
    (docs/calls-and-ports.md); chatmail:echobot:enabled false (the default)
    applies .clean, which stops and removes it again. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
include:
{%- if chatmail.echobot.enabled %}
  - .package
  - .config
  - .service
{%- else %}
  - .clean
{%- endif %}
