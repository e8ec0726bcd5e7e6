{#- Stop and remove the chatmaild daemons, timers, venv and source; the
    mailboxes and state directory stay. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units, timers with context %}
{%- set paths = chatmail.lookup.paths %}

{%- for name in timers %}

chatmail-chatmaild-{{ name }}-timer-dead:
  service.dead:
    - name: {{ name }}.timer
    - enable: false
{%- endfor %}

{%- for name in units %}

chatmail-chatmaild-{{ name }}-service-dead:
  service.dead:
    - name: {{ name }}
    - enable: false
{%- endfor %}

chatmail-chatmaild-clean-files-absent:
  file.absent:
    - names:
{%- for name in units.keys() | list + timers.keys() | list %}
      - {{ paths.systemd_dir }}/{{ name }}.service
{%- endfor %}
{%- for name in timers %}
      - {{ paths.systemd_dir }}/{{ name }}.timer
{%- endfor %}
      - /usr/local/lib/chatmail-cgi
      - {{ paths.ini }}
      - {{ paths.venv }}
      - {{ paths.src_dir }}
    - require:
{%- for name in units %}
      - service: chatmail-chatmaild-{{ name }}-service-dead
{%- endfor %}

chatmail-chatmaild-clean-daemon-reloaded:
  module.run:
    - service.systemctl_reload: []
    - onchanges:
      - file: chatmail-chatmaild-clean-files-absent
