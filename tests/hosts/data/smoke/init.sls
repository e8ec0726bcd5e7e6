# Harness smoke state: independent of the relay states; proves that a host
# installs packages through the apt proxy and that systemd really runs services.
smoke-cron-pkg-installed:
  pkg.installed:
    - name: cron

smoke-cron-service-running:
  service.running:
    - name: cron
    - enable: true
    - require:
      - pkg: smoke-cron-pkg-installed

smoke-marker-file-managed:
  file.managed:
    - name: /etc/cmsalt-smoke
    - contents: converged by the harness smoke state
    - mode: '0644'
