{#- Where apt takes Dovecot from (chatmail:dovecot:source, docs/dovecot.md).
    patched: the build's archive (salt://, a path or a URL with sha256) becomes
    a local flat apt repository, and an apt pin makes its versions the only
    candidates for dovecot-*: `apt upgrade` keeps them even when Debian
    publishes a newer dovecot (chatmail_status.report flags that).
    debian: no local repository, no pin.
    Included by chatmail (before chatmail.chatmaild, whose packages pull in
    dovecot-core) and by chatmail.dovecot.package. #}
{%- set tplroot = tpldir.split('/')[0] %}
{%- from tplroot ~ "/map.jinja" import chatmail with context %}
{%- set dovecot = chatmail.dovecot %}
{%- set base = chatmail.lookup.paths.dovecot_repo %}
{%- set tar = base ~ "/chatmail-dovecot.tar" %}
{%- set repo = base ~ "/repo" %}
{%- set apt_list = "/etc/apt/sources.list.d/chatmail-dovecot.list" %}
{%- set apt_pin = "/etc/apt/preferences.d/chatmail-dovecot" %}
{%- if dovecot.source == "patched" %}

chatmail-dovecot-repo-archive-file-managed:
  file.managed:
    - name: {{ tar }}
    - source: {{ dovecot.archive }}
{%-   if dovecot.sha256 %}
    - source_hash: sha256={{ dovecot.sha256 }}
{%-   endif %}
    - makedirs: true
    - user: root
    - group: root
    - mode: '0644'

{#- The archive holds the .debs, Packages, Release (Origin: chatmail-salt),
    VERSION and SHA256SUMS; unpacked next to the live repository, checked,
    then swapped in. .archive.sha256 records what the repository came from. #}
chatmail-dovecot-repo-unpack-cmd-run:
  cmd.run:
    - name: >-
        set -e; cd {{ base }}; rm -rf repo.new; mkdir repo.new;
        tar -xf chatmail-dovecot.tar -C repo.new;
        (cd repo.new && sha256sum --quiet --strict -c SHA256SUMS);
        grep -qx 'Origin: chatmail-salt' repo.new/Release;
        sha256sum < chatmail-dovecot.tar | cut -c1-64 > repo.new/.archive.sha256;
        rm -rf repo; mv repo.new repo
    - unless: >-
        test "$(sha256sum < {{ tar }} | cut -c1-64)"
        = "$(cat {{ repo }}/.archive.sha256 2>/dev/null)"
    - require:
      - file: chatmail-dovecot-repo-archive-file-managed

chatmail-dovecot-repo-sources-file-managed:
  file.managed:
    - name: {{ apt_list }}
    - mode: '0644'
    - contents: |
        # managed by salt (chatmail.dovecot): the patched Dovecot build
        deb [trusted=yes] file:{{ repo }} ./

chatmail-dovecot-repo-pin-file-managed:
  file.managed:
    - name: {{ apt_pin }}
    - mode: '0644'
    - contents: |
        # managed by salt (chatmail.dovecot): dovecot-* only from the patched
        # build, whatever version Debian has (chatmail_status.report tells
        # when Debian's is newer; rebuild with ./cmsalt build-dovecot).
        Package: dovecot-*
        Pin: release o=chatmail-salt
        Pin-Priority: 1001

{#- Only this one source: the rest of apt's lists stay as they are (cmd.run:
    pkg.refresh_db would update every source). #}
chatmail-dovecot-repo-apt-update-cmd-run:
  cmd.run:
    - name: >-
        apt-get update -qq -o Dir::Etc::sourcelist={{ apt_list }}
        -o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0
    - onchanges:
      - cmd: chatmail-dovecot-repo-unpack-cmd-run
      - file: chatmail-dovecot-repo-sources-file-managed
    - require:
      - file: chatmail-dovecot-repo-pin-file-managed
{%- else %}

chatmail-dovecot-repo-file-absent:
  file.absent:
    - names:
      - {{ apt_pin }}
      - {{ apt_list }}
      - {{ base }}

{#- apt forgets the removed repository's packages (a patched build still
    installed is replaced by chatmail.dovecot.package). #}
chatmail-dovecot-repo-apt-updated:
  module.run:
    - pkg.refresh_db: []
    - onchanges:
      - file: chatmail-dovecot-repo-file-absent
{%- endif %}
