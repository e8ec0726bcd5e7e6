{#- chatmail.ini and the systemd units of the chatmaild daemons and timers. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- from tplroot ~ "/chatmaild/units.jinja" import units, timers with context %}
{%- set paths = chatmail.lookup.paths %}

include:
  - {{ tplroot }}.base.config

chatmail-chatmaild-config-file-managed:
  file.managed:
    - name: {{ paths.ini }}
    - source: salt://{{ tpldir }}/files/chatmail.ini.jinja
    - template: jinja
    - user: root
    - group: root
    # read by the daemons (vmail) and by chatmail-newemail under fcgiwrap (www-data)
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
    - require:
      - file: chatmail-base-config-directory

{%- for name, unit in units.items() %}

chatmail-chatmaild-{{ name }}-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.service
    - source: salt://{{ tpldir }}/files/daemon.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        unit: {{ unit | json }}
{%- endfor %}

{%- for name, unit in timers.items() %}

chatmail-chatmaild-{{ name }}-unit-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.service
    - source: salt://{{ tpldir }}/files/daemon.service.jinja
    - template: jinja
    - mode: "0644"
    - context:
        chatmail: {{ chatmail | json }}
        unit: {{ unit | json }}

chatmail-chatmaild-{{ name }}-timer-file-managed:
  file.managed:
    - name: {{ paths.systemd_dir }}/{{ name }}.timer
    - source: salt://{{ tpldir }}/files/daily.timer.jinja
    - template: jinja
    - mode: "0644"
    - context:
        unit: {{ unit | json }}
{%- endfor %}

chatmail-chatmaild-newemail-cgi-file-managed:
  file.managed:
    - name: /usr/local/lib/chatmail-cgi/newemail
    - source: salt://{{ tpldir }}/files/newemail.cgi.jinja
    - template: jinja
    - makedirs: true
    - mode: "0755"
    - context:
        chatmail: {{ chatmail | json }}
