{#- The relay's own TURN server for calls (Debian's coturn,
    docs/calls-and-ports.md); with chatmail:turn:enabled false the same
    include stops it again. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
include:
{%- if chatmail.turn.enabled %}
  - .package
  - .config
  - .service
{%- else %}
  - .clean
{%- endif %}
