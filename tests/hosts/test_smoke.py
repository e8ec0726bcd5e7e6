"""The harness itself, independent of the relay states."""

from tests.harness import dns, hosts


def test_systemd_is_pid1_and_running(smoke_host):
    assert smoke_host.exec("cat", "/proc/1/comm").stdout.strip() == "systemd"
    state = smoke_host.exec("systemctl", "is-system-running", check=False).stdout.strip()
    failed = smoke_host.exec("systemctl", "--failed", "--no-legend", check=False).stdout
    assert state == "running", failed


def test_smoke_state_converges_and_service_runs(smoke_host):
    first = hosts.converge(smoke_host, sls="smoke")
    assert first.ok, first.summary()
    assert "smoke-cron-pkg-installed" in first.changed
    assert smoke_host.is_active("cron")
    assert smoke_host.exec("systemctl", "is-enabled", "cron").stdout.strip() == "enabled"
    assert "smoke state" in smoke_host.exec("cat", "/etc/cmsalt-smoke").stdout
    again = hosts.converge(smoke_host, sls="smoke")
    assert again.ok, again.summary()
    assert again.changed == []


def test_stopped_service_is_started_again(smoke_host):
    smoke_host.exec("systemctl", "stop", "cron")
    assert not smoke_host.is_active("cron")
    result = hosts.converge(smoke_host, sls="smoke")
    assert result.ok, result.summary()
    assert result.changed == ["smoke-cron-service-running"]
    assert smoke_host.is_active("cron")


def test_no_route_outside(smoke_host):
    proc = smoke_host.exec(
        "curl", "-sS", "--noproxy", "*", "-m", "5", "http://deb.debian.org/", check=False
    )
    assert proc.returncode != 0


def test_bad_sls_reports_error(smoke_host):
    result = hosts.converge(smoke_host, sls="no-such-sls")
    assert not result.ok
    assert any("no-such-sls" in e for e in result.errors)


def test_test_zones_resolve_in_hosts(smoke_host):
    zone = dns.zone_text("dnscheck.test", ["www IN A 172.31.77.99", "@ IN MX 10 www"])
    dns.set_zone("dnscheck.test", zone)
    out = smoke_host.exec("getent", "hosts", "www.dnscheck.test", check=False)
    assert "172.31.77.99" in out.stdout, smoke_host.exec("cat", "/etc/resolv.conf").stdout
