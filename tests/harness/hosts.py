"""Boot systemd hosts on the test network, run commands in them, converge them with salt."""

import atexit
import contextlib
import json
import random
import shlex
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import (
    GATEWAY,
    KEEP_LABEL,
    LABEL,
    NETWORK,
    REPO,
    SLOT,
    SLOT_LABEL,
    dns,
    docker,
    ensure_infra,
    network,
    scoped,
    slots_in_use,
)
from .docker import DockerError
from .docker import docker as docker_cli

REPO_MOUNT = "/srv/chatmail-salt"
PILLAR_MOUNT = "/srv/pillar"
MINION_CONF = "/etc/salt/minion.d/chatmail.conf"
FILE_ROOTS = [f"{REPO_MOUNT}/salt", f"{REPO_MOUNT}/tests/hosts/data"]

_booted = set()
_booted_lock = threading.Lock()


@dataclass
class Host:
    name: str
    fqdn: str
    ip: str
    pillar_dir: Path | None = None

    def exec(self, *cmd, check=True, input=None, timeout=600, user=None):
        """Run argv inside the host; returns CompletedProcess (text, captured)."""
        args = ["exec", "-i" if input is not None else None, *(["-u", user] if user else [])]
        args = [a for a in args if a]
        proc = docker_cli(*args, self.name, *cmd, check=False, input=input, timeout=timeout)
        if check and proc.returncode != 0:
            raise DockerError(
                f"{self.name}: {shlex.join(cmd)} -> {proc.returncode}\n"
                f"stdout: {proc.stdout[-4000:]}\nstderr: {proc.stderr[-4000:]}"
            )
        return proc

    def sh(self, script, **kw):
        return self.exec("bash", "-c", script, **kw)

    def is_active(self, unit):
        return self.exec("systemctl", "is-active", unit, check=False).stdout.strip() == "active"

    def write_file(self, path, content, mode="0644"):
        self.exec(
            "sh",
            "-c",
            f"mkdir -p \"$(dirname '{path}')\" && cat > '{path}' && chmod {mode} '{path}'",
            input=content,
        )


@dataclass
class ConvergeResult:
    retcode: int
    states: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    @property
    def changed(self):
        return [s["__id__"] for s in self._ordered() if s.get("changes")]

    @property
    def failed(self):
        return [
            (s["__id__"], s.get("comment", "")) for s in self._ordered() if s.get("result") is False
        ]

    @property
    def ok(self):
        return self.retcode == 0 and not self.errors and not self.failed

    def _ordered(self):
        return sorted(self.states.values(), key=lambda s: s.get("__run_num__", 0))

    def summary(self):
        lines = [f"retcode={self.retcode} states={len(self.states)} changed={len(self.changed)}"]
        lines += [f"ERROR: {e}" for e in self.errors]
        for state in self._ordered():
            if state.get("result") is False:
                lines.append(f"FAILED {state['__id__']}: {state.get('comment', '')}")
                changes = state.get("changes") or {}
                if isinstance(changes, dict) and changes.get("stderr"):
                    lines.append(f"  stderr: {str(changes['stderr'])[-1500:]}")
        if not self.states and not self.errors:
            lines.append(f"stdout: {self.stdout[-2000:]}\nstderr: {self.stderr[-2000:]}")
        return "\n".join(lines)


def _container_state(name):
    proc = docker_cli("inspect", "--format", "{{.State.Running}}", scoped(name), check=False)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() == "true"


def _ip(name):
    fmt = f'{{{{(index .NetworkSettings.Networks "{NETWORK}").IPAddress}}}}'
    return docker_cli("inspect", "--format", fmt, scoped(name), check=False).stdout.strip()


def used_ips():
    fmt = "{{range .Containers}}{{.IPv4Address}} {{end}}"
    out = docker_cli("network", "inspect", "--format", fmt, NETWORK, check=False).stdout
    return {addr.split("/")[0] for addr in out.split()}


def free_ip():
    """A random unused address of the dynamic half (.128-.254) of the test network."""
    prefix = GATEWAY.rsplit(".", 1)[0]
    free = sorted({f"{prefix}.{n}" for n in range(128, 255)} - used_ips())
    if not free:
        raise RuntimeError(f"no free address left on {NETWORK}")
    return random.choice(free)


def minion_config(fqdn):
    return json.dumps(
        {
            "id": fqdn,
            "file_client": "local",
            "file_roots": {"base": FILE_ROOTS},
            "pillar_roots": {"base": [PILLAR_MOUNT]},
            "enable_fqdns_grains": False,
            "log_level_logfile": "info",
        },
        indent=2,
    )


def wait_running(host, timeout=120):
    state = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc = host.exec("systemctl", "is-system-running", check=False, timeout=30)
        state = proc.stdout.strip()
        if state in ("running", "degraded"):
            return state
        time.sleep(0.5)
    raise TimeoutError(f"{host.name}: systemd is still {state!r} after {timeout}s")


def boot(name, fqdn, ip=None, pillar_dir=None, extra_mounts=(), reuse=False, keep=False):
    """Start a systemd host (or reuse a running one of that name when reuse=True).

    name: made unique to this process's slot (harness.scoped); Host.name is the result.
    ip: a fixed address (harness.addr(n), n in 2-127), "auto" (a free one of
    .128-.254) or None (docker chooses).
    extra_mounts: iterable of (host_path, container_path[, "ro"|"rw"]).
    Hosts are removed at interpreter exit unless keep=True (then they are labelled
    keep and survive the slot's clean-up by the next session too).
    """
    _started, tag = ensure_infra()
    name = scoped(name)
    running = _container_state(name)
    if running and reuse:
        ip = _ip(name)
        host = Host(name, fqdn, ip, Path(pillar_dir) if pillar_dir else None)
    else:
        if running is not None:
            docker_cli("rm", "-f", name)
        args = [
            "run", "-d", "--name", name, "--label", f"{LABEL}=1",
            "--label", f"{SLOT_LABEL}={SLOT}", *(["--label", f"{KEEP_LABEL}=1"] if keep else []),
            "--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
            "--tmpfs", "/run", "--tmpfs", "/run/lock",
            "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
            "--stop-signal", "SIGRTMIN+3",
            "--network", NETWORK, "--hostname", fqdn, "--dns", GATEWAY,
            # real hosts have ::1; docker disables IPv6 in containers by default
            "--sysctl", "net.ipv6.conf.all.disable_ipv6=0",
            "--sysctl", "net.ipv6.conf.lo.disable_ipv6=0",
            "-v", f"{REPO}:{REPO_MOUNT}:ro",
        ]  # fmt: skip
        if pillar_dir:
            args += ["-v", f"{Path(pillar_dir).resolve()}:{PILLAR_MOUNT}:ro"]
        for mount in extra_mounts:
            src, dst, *mode = mount
            args += ["-v", f"{src}:{dst}:{mode[0] if mode else 'ro'}"]
        args += [tag, "/lib/systemd/systemd"]
        for attempt in range(5):
            want = free_ip() if ip == "auto" else ip
            try:
                docker_cli(*args[:2], *(["--ip", want] if want else []), *args[2:])
                break
            except DockerError as exc:
                # "auto": another session may have taken the address meanwhile
                if ip != "auto" or "in use" not in str(exc) or attempt == 4:
                    raise
                docker_cli("rm", "-f", name, check=False)
        ip = _ip(name)
        host = Host(name, fqdn, ip, Path(pillar_dir) if pillar_dir else None)
    if not keep:
        with _booted_lock:
            _booted.add(name)
    wait_running(host)
    host.write_file(MINION_CONF, minion_config(fqdn) + "\n")
    return host


@contextlib.contextmanager
def booted(keep=False, **boot_args):
    """boot(**boot_args) for a `with` block; the host is destroyed at its end
    unless keep (then it is also labelled keep, see boot())."""
    host = boot(keep=keep, **boot_args)
    try:
        yield host
    finally:
        if not keep:
            destroy(host)


def boot_many(specs):
    """Boot several hosts in parallel; specs are dicts of boot() keyword arguments."""
    with ThreadPoolExecutor(max_workers=max(1, len(specs))) as pool:
        return list(pool.map(lambda spec: boot(**spec), specs))


def converge_many(host_list, **kwargs):
    """converge() several hosts in parallel; returns results in the same order."""
    with ThreadPoolExecutor(max_workers=max(1, len(host_list))) as pool:
        return list(pool.map(lambda h: converge(h, **kwargs), host_list))


def salt_call(host, *args, timeout=1800):
    return host.exec(
        "salt-call", "--local", "--retcode-passthrough", "--out=json", *args,
        check=False, timeout=timeout,
    )  # fmt: skip


def converge(host, sls=None, pillar_override=None, test=False, timeout=1800):
    """saltutil.sync_all, then state.apply [sls]; returns a ConvergeResult."""
    sync = salt_call(host, "saltutil.sync_all", timeout=timeout)
    if sync.returncode != 0:
        return ConvergeResult(
            sync.returncode, errors=[f"saltutil.sync_all failed: {sync.stderr[-2000:]}"],
            stdout=sync.stdout, stderr=sync.stderr,
        )  # fmt: skip
    args = ["state.apply"]
    if sls:
        args.append(sls if isinstance(sls, str) else ",".join(sls))
    if pillar_override is not None:
        args.append("pillar=" + json.dumps(pillar_override))
    if test:
        args.append("test=True")
    proc = salt_call(host, *args, timeout=timeout)
    return parse_state_output(proc.returncode, proc.stdout, proc.stderr)


def flush_resolver(host_list, zones):
    """Make the relays' local resolver (unbound) forget what it cached for `zones`
    and its view of the upstream servers: after a zone changed in the harness nsd,
    the next lookups see the new records instead of cached (negative) answers."""
    script = "unbound-control flush_infra all >/dev/null && " + " && ".join(
        f"unbound-control flush_zone {shlex.quote(zone)} >/dev/null" for zone in zones
    )
    for host in host_list:
        host.sh(script, timeout=60)


def parse_state_output(retcode, stdout, stderr):
    result = ConvergeResult(retcode, stdout=stdout, stderr=stderr)
    try:
        data = json.loads(stdout)
    except ValueError:
        result.errors.append(f"unparseable salt output: {stdout[-2000:]} {stderr[-2000:]}")
        return result
    local = data.get("local", data) if isinstance(data, dict) else data
    if isinstance(local, dict):
        for key, ret in local.items():
            if isinstance(ret, dict):
                ret.setdefault("__id__", key.split("_|-")[1] if "_|-" in key else key)
                result.states[key] = ret
            else:
                result.errors.append(f"{key}: {ret}")
    elif isinstance(local, list):
        result.errors.extend(str(e) for e in local)
    else:
        result.errors.append(str(local))
    return result


def destroy(host):
    name = host.name if isinstance(host, Host) else scoped(host)
    docker_cli("rm", "-f", "-v", name, check=False, timeout=120)
    with _booted_lock:
        _booted.discard(name)


def list_hosts(slot=SLOT):
    """[(name, status, ip)] of the harness containers of `slot` (None: all slots)."""
    return [(name, status, ip) for name, status, ip, _slot, _keep in _containers(slot)]


def _containers(slot=None):
    if not docker.running():
        return []
    fmt = (
        f'{{{{.Names}}}}\t{{{{.Status}}}}\t{{{{.Label "{SLOT_LABEL}"}}}}'
        f'\t{{{{.Label "{KEEP_LABEL}"}}}}'
    )
    proc = docker_cli("ps", "-a", "--filter", f"label={LABEL}", "--format", fmt, check=False)
    rows = []
    for line in proc.stdout.splitlines():
        name, status, their_slot, keep = (line.split("\t") + ["", ""])[:4]
        their_slot = int(their_slot) if their_slot.isdigit() else None
        if slot is None or their_slot == slot:
            fmt_ip = "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"
            ip = docker_cli("inspect", "--format", fmt_ip, name, check=False).stdout.strip()
            rows.append((name, status, ip, their_slot, keep == "1"))
    return rows


def remove_slot_hosts(keep_kept=True):
    """Remove this slot's hosts (but those booted with keep=True if keep_kept)."""
    for name, _status, _ip, _slot, keep in _containers(SLOT):
        if not (keep and keep_kept):
            destroy(name)


def teardown_all(stop_daemons=True):
    """Remove the hosts, networks and nsd of this slot and of every slot no live
    process holds (a dead session's); then, unless another slot is in use, stop
    the apt proxy and dockerd."""
    from . import locked

    with locked():
        busy = set(slots_in_use())

        def idle(slot):
            # no slot label: an older harness's, or a helper container of a
            # session (e.g. a package build): only when nothing is in use
            return slot not in busy if slot is not None else not busy

        if docker.running():
            for name, _status, _ip, slot, _keep in _containers(None):
                if idle(slot):
                    destroy(name)
            for net, slot in network.harness_networks().items():
                if idle(slot):
                    network.remove_network(net)
        dns.stop_slots(exclude=busy)
        if stop_daemons and not busy:
            from . import remove_service_ip

            network.stop_proxy()
            docker.stop()
            remove_service_ip()


@atexit.register
def _cleanup_booted():
    with _booted_lock:
        names = list(_booted)
    for name in names:
        try:
            destroy(name)
        except (OSError, subprocess.SubprocessError):
            pass
