{#- Build the patched Dovecot on THIS machine and publish it to a file root,
    for a salt master that serves it to its fleet (docs/dovecot.md):

        salt-call --local state.apply chatmail.dovecot.build

    Debian 12 only; installs dovecot's build dependencies (~150 -dev packages)
    here: prefer a dedicated build host, or ./cmsalt build-dovecot, which
    builds in a throwaway container.  Nothing is built when the work
    directory already holds this recipe's build of Debian's newest dovecot
    source (the state then reports no changes); a newer Debian source or a
    changed patch builds anew (~25 CPU-minutes) and publishes it.

    Optional pillar (outside chatmail:, this state only):
      chatmail_dovecot_build:
        publish_dir: /srv/chatmail-salt/salt/chatmail-dovecot  # <file root>/chatmail-dovecot
        work_dir: /var/cache/chatmail-dovecot-build
        lto: false                 # true: Debian's LTO (about twice the CPU time)
        allow_older_source: false  # true: build the newest *fetchable* source #}
{%- set opts = salt["pillar.get"]("chatmail_dovecot_build", {}) %}
{%- set publish = opts.get("publish_dir", "/srv/chatmail-salt/salt/chatmail-dovecot") %}
{%- set work = opts.get("work_dir", "/var/cache/chatmail-dovecot-build") %}
{%- set recipe = "/usr/local/lib/chatmail-dovecot-build" %}

chatmail-dovecot-build-recipe-file-recurse:
  file.recurse:
    - name: {{ recipe }}
    - source: salt://{{ tpldir }}/recipe
    - clean: true
    - user: root
    - group: root
    - dir_mode: '0755'
    - file_mode: '0644'

{#- cmd.run: the build is the recipe's own script (also run by ./cmsalt build-dovecot). #}
chatmail-dovecot-build-cmd-run:
  cmd.run:
    - name: >-
        bash {{ recipe }}/build-debs.sh {{ work }} --publish {{ publish }} --stateful
        {%- if opts.get("lto") %} --lto{% endif %}
        {%- if opts.get("allow_older_source") %} --allow-older-source{% endif %}
    - stateful: true
    - timeout: 14400
    - require:
      - file: chatmail-dovecot-build-recipe-file-recurse
