{#- Renders the merged map; chatmail_config.build raises (naming the pillar
    key) when the pillar is invalid, which fails this SLS and, because every
    chatmail SLS imports the same map, the whole highstate before any change. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}

chatmail-validate-pillar-test-nop:
  test.nop:
    - name: >-
        chatmail pillar valid: {{ chatmail.domain_list | join(', ') }}
        (primary {{ chatmail.primary }})
