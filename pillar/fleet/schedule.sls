{#- Scheduled highstate: every minion converges itself at an interval with
    splay; maxrunning 1 and queue=False never start a second run while one
    is going; return_job sends each result to the master's job cache. #}
{%- import_yaml "settings.yaml" as settings %}
{%- set hs = settings.highstate %}
schedule:
  chatmail-highstate:
    function: state.highstate
    kwargs:
      queue: false
    seconds: {{ (hs.minutes * 60) | int }}
    splay: {{ hs.splay | int }}
    maxrunning: 1
    return_job: true
    run_on_start: false
    enabled: {{ hs.enabled | json }}
    timeout: {{ hs.timeout | int }}
