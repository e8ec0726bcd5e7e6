"""Shared fixtures for the chatmaild tests.

Fixtures for everyone:

``make_ini(**params, domains=None, sections=None) -> Path``
    Write a ``chatmail.ini`` into the test's temp dir.  Mailboxes, state dir
    and kill-switch file live under ``tmp_path``; the resource brakes are
    relaxed (tests must not fail on a loaded CI machine).  ``domains`` is a
    list (first = primary; default ``["chat.example.org"]``), ``sections``
    maps a domain to a dict of per-domain overrides, ``params`` override or
    add ``[params]`` keys (``None`` removes a key).  Calling it again rewrites
    the same file.

``chatmail_ini`` / ``config``
    The default ini path and its :class:`chatmaild.config.Config`.

``start_daemon(argv, *, socket=None, port=None, timeout=20, env=None) -> Popen``
    Start a console script (``argv[0]`` is looked up next to the Python
    interpreter, e.g. ``"doveauth"``) with stdin/stdout/stderr redirected to
    a log file, and wait until ``socket`` (a unix socket path) accepts
    connections or ``port`` (127.0.0.1) is listening.  The process is killed
    at fixture teardown; ``proc.logpath`` is its combined output, shown if
    it dies during start.  Extra keyword arguments go to ``subprocess.Popen``
    (e.g. ``user=``, ``group=``, ``cwd=``).

``dict_client(socket_path, user="", dict_name="") -> DictClient``
    A Dovecot 2.3 dict protocol client on a real unix socket (sends the
    hello line first).  Methods: ``send_line(line)``, ``read_line()``,
    ``lookup(key, user=None) -> ("O"|"N"|"F", value)``,
    ``iterate(path, flags=0, max_rows=0) -> list[(key, value)]``,
    ``transaction(id, [("S", key, value), ("U", key), ("A", key, diff)])
    -> reply line`` (begin, the changes, commit).  Closed at teardown.

``socket_path(name) -> Path``
    A unix socket path in a short private temp dir (``tmp_path`` can exceed
    the 108-byte ``sun_path`` limit).

``free_port()``
    The fixture returns a function giving a free 127.0.0.1 TCP port.

``mail_sandbox`` / ``dovecot(auth_socket, lastlogin_socket=None,
metadata_socket=None, extra="")``
    A real, private Dovecot 2.3 (IMAP, no TLS, on a free port) using the
    dict daemons like the relay does.  The daemons must then run as the
    unprivileged mail user: start them with
    ``start_daemon([*mail_sandbox.argv("doveauth"), mail_sandbox.ini, sock],
    socket=sock, **mail_sandbox.popen)`` and sockets from
    ``mail_sandbox.socket(name)``.  Skipped unless root with Dovecot installed.
"""

from __future__ import annotations

import base64
import itertools
import os
import shutil
import socket as socketmod
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BIN_DIR = Path(sys.executable).parent
DEFAULT_DOMAIN = "chat.example.org"


def _port_block() -> range:
    """This pytest process's own block of ports below the ephemeral range
    (32768-60999): a port found by binding port 0 and closing could be taken,
    before the daemon binds it, by a concurrent test's outgoing connection or
    handed to another xdist worker.  The worker index and the session's pid
    pick one of 24 blocks of 500."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    session = os.getppid() if "PYTEST_XDIST_WORKER" in os.environ else os.getpid()
    block = (index + 4 * (session % 6)) % 24
    return range(20000 + block * 500, 20500 + block * 500)


_PORTS = itertools.cycle(_port_block())


def find_free_port() -> int:
    for _ in range(500):
        port = next(_PORTS)
        with socketmod.socket(socketmod.AF_INET, socketmod.SOCK_STREAM) as s:
            s.setsockopt(socketmod.SOL_SOCKET, socketmod.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise OSError("no free port in this process's block")


def dovecot_escape(text: str) -> str:
    """Tab-escape a field the way Dovecot's ``str_append_tabescaped`` does."""
    return (
        text.replace("\001", "\0011")
        .replace("\t", "\001t")
        .replace("\r", "\001r")
        .replace("\n", "\001n")
        .replace("\0", "\0010")
    )


def dovecot_unescape(text: str) -> str:
    out = []
    i = 0
    table = {"0": "\0", "1": "\001", "t": "\t", "r": "\r", "n": "\n"}
    while i < len(text):
        c = text[i]
        if c == "\001" and i + 1 < len(text):
            out.append(table.get(text[i + 1], text[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def write_ini(path: Path, base: Path, domains=None, sections=None, **params) -> Path:
    domains = list(domains or [DEFAULT_DOMAIN])
    values = {
        "mail_domain": " ".join(domains),
        "mailboxes_dir": str(base / "mailboxes"),
        "state_dir": str(base / "state"),
        "nocreate_file": str(base / "nocreate"),
        "max_load_1m": "10000",
        "min_available_memory": "0",
        "min_free_disk_space": "0",
    }
    for key, value in params.items():
        if value is None:
            values.pop(key, None)
        elif isinstance(value, (list, tuple)):
            values[key] = " ".join(str(v) for v in value)
        elif isinstance(value, bool):
            values[key] = "true" if value else "false"
        else:
            values[key] = str(value)
    lines = ["[params]"] + [f"{k} = {v}" for k, v in values.items()]
    for dom, overrides in (sections or {}).items():
        lines.append("")
        lines.append(f"[domain:{dom}]")
        lines += [f"{k} = {v}" for k, v in overrides.items()]
    path.write_text("\n".join(lines) + "\n")
    (base / "mailboxes").mkdir(exist_ok=True)
    (base / "state").mkdir(exist_ok=True)
    return path


@pytest.fixture
def make_ini(tmp_path):
    path = tmp_path / "chatmail.ini"

    def make(domains=None, sections=None, **params) -> Path:
        return write_ini(path, tmp_path, domains=domains, sections=sections, **params)

    return make


@pytest.fixture
def chatmail_ini(make_ini) -> Path:
    return make_ini()


@pytest.fixture
def config(chatmail_ini):
    from chatmaild.config import read_config

    return read_config(chatmail_ini)


@pytest.fixture
def socket_path():
    base = Path(tempfile.mkdtemp(prefix="cmsock-", dir="/tmp"))

    def make(name: str) -> Path:
        return base / name

    yield make
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def free_port():
    return find_free_port


def script_path(name: str) -> str:
    candidate = BIN_DIR / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"console script {name!r} not installed (pip install -e chatmaild)")
    return found


def _socket_ready(path) -> bool:
    if not os.path.exists(path):
        return False
    s = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
    try:
        s.settimeout(1)
        s.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _port_ready(port) -> bool:
    try:
        with socketmod.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start_process(argv, logpath, *, socket=None, port=None, timeout=20.0, env=None, **popen_kwargs):
    argv = [str(a) for a in argv]
    argv[0] = script_path(argv[0]) if os.sep not in argv[0] else argv[0]
    full_env = dict(os.environ)
    full_env.update(env or {})
    with open(logpath, "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            argv,
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            start_new_session=True,
            **popen_kwargs,
        )
    proc.logpath = Path(logpath)
    deadline = time.monotonic() + timeout
    while True:
        if socket is not None and _socket_ready(socket):
            break
        if port is not None and _port_ready(port):
            break
        if socket is None and port is None:
            break
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited with {proc.returncode}:\n{proc.logpath.read_text()}")
        if time.monotonic() > deadline:
            stop_process(proc)
            raise RuntimeError(f"{argv} not ready in {timeout}s:\n{proc.logpath.read_text()}")
        time.sleep(0.05)
    return proc


def stop_process(proc):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def start_daemon(tmp_path):
    procs = []

    def start(argv, *, socket=None, port=None, timeout=20.0, env=None, **popen_kwargs):
        logpath = tmp_path / f"{Path(str(argv[0])).name}-{len(procs)}.log"
        proc = start_process(
            argv, logpath, socket=socket, port=port, timeout=timeout, env=env, **popen_kwargs
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        stop_process(proc)


class DictClient:
    """Speaks Dovecot 2.3's dict client protocol (major 3, minor 2)."""

    def __init__(self, path, user="", dict_name="", timeout=30.0):
        self.user = user
        self.sock = socketmod.socket(socketmod.AF_UNIX, socketmod.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.rfile = self.sock.makefile("rb")
        self.send_line(f"H3\t2\t0\t{dovecot_escape(user)}\t{dovecot_escape(dict_name)}")

    def send_line(self, line: str | bytes):
        if isinstance(line, str):
            line = line.encode("utf-8")
        self.sock.sendall(line + b"\n")

    def read_line(self) -> str:
        raw = self.rfile.readline()
        if not raw:
            raise ConnectionError("dict server closed the connection")
        return raw.decode("utf-8").rstrip("\n")

    def lookup(self, key, user=None):
        user = self.user if user is None else user
        self.send_line(f"L{dovecot_escape(key)}\t{dovecot_escape(user)}")
        line = self.read_line()
        return line[:1], dovecot_unescape(line[1:])

    def iterate(self, path, flags=0, max_rows=0, user=None):
        user = self.user if user is None else user
        self.send_line(f"I{flags}\t{max_rows}\t{dovecot_escape(path)}\t{dovecot_escape(user)}")
        rows = []
        while True:
            line = self.read_line()
            if line == "":
                return rows
            if line[0] != "O":
                raise AssertionError(f"unexpected iterate reply {line!r}")
            key, _, value = line[1:].partition("\t")
            rows.append((dovecot_unescape(key), dovecot_unescape(value)))

    def transaction(self, tid, changes, user=None, commit="C"):
        user = self.user if user is None else user
        self.send_line(f"B{tid}\t{dovecot_escape(user)}")
        for change in changes:
            cmd, *fields = change
            self.send_line(f"{cmd}{tid}\t" + "\t".join(dovecot_escape(str(f)) for f in fields))
        self.send_line(f"{commit}{tid}")
        return self.read_line()

    def close(self):
        try:
            self.rfile.close()
        finally:
            self.sock.close()


@pytest.fixture
def dict_client():
    clients = []

    def connect(path, user="", dict_name="", timeout=30.0):
        client = DictClient(path, user=user, dict_name=dict_name, timeout=timeout)
        clients.append(client)
        return client

    yield connect
    for client in clients:
        client.close()


MAIL_USER = "dovenull"
SYSTEM_PYTHON = "/usr/bin/python3"


def dovecot_available() -> str | None:
    """Why the real-Dovecot tests cannot run here, or None if they can."""
    import pwd

    if os.geteuid() != 0:
        return "needs root (dovecot master)"
    if not shutil.which("dovecot") or not shutil.which("doveadm"):
        return "dovecot (Debian dovecot-imapd) is not installed"
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} missing"
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        return f"system user {MAIL_USER} missing"
    return None


DOVECOT_CONF = """\
instance_name = {name}
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
auth_verbose = yes
auth_failure_delay = 0
auth_username_chars = abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_@[]
mail_location = maildir:~
mail_uid = {user}
mail_gid = {user}
first_valid_uid = 1
mail_plugins = $mail_plugins quota
passdb {{
  driver = dict
  args = {base}/auth.conf.ext
}}
userdb {{
  driver = dict
  args = {base}/auth.conf.ext
}}
service auth {{
  user = root
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
}}
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_quota {imap_plugins}
}}
plugin {{
  quota = maildir:User quota
{plugin_settings}
}}
{extra}
"""

AUTH_CONF = """\
uri = proxy:{socket}:auth
iterate_disable = no
iterate_prefix = userdb/
default_pass_scheme = plain
password_key = passdb/%Ew"%Eu
user_key = userdb/%Eu
"""


@pytest.fixture
def mail_sandbox(make_ini):
    """A directory tree the unprivileged mail user can use (pytest's tmp_path
    is not reachable for it): ``.base``, ``.ini`` (a chatmail.ini inside it
    with mailboxes under ``.base/mail``; ``.write_ini(**params)`` rewrites
    it), ``.socket(name)``, ``.popen`` (Popen keyword arguments that run a
    daemon as the mail user) and ``.argv(module)``: the command running
    ``chatmaild.<module>.main`` with the system Python 3 (the test venv's
    interpreter may live where the mail user cannot read it).  Skips unless
    running as root with Dovecot installed."""
    reason = dovecot_available()
    if reason:
        pytest.skip(reason)
    import pwd

    import chatmaild

    src_dir = str(Path(chatmaild.__file__).resolve().parent.parent)

    pw = pwd.getpwnam(MAIL_USER)
    base = Path(tempfile.mkdtemp(prefix="cmdc-", dir="/tmp"))
    for sub in ("mail", "sock", "state"):
        (base / sub).mkdir()
    base.chmod(0o755)

    class Sandbox:
        user = MAIL_USER
        popen = {
            "user": pw.pw_uid,
            "group": pw.pw_gid,
            "extra_groups": [],
            "env": {"PYTHONPATH": src_dir, "HOME": "/"},
        }

        @staticmethod
        def argv(module):
            return [SYSTEM_PYTHON, "-m", f"chatmaild.{module}"]

        def __init__(self):
            self.base = base
            self.ini = None

        def write_ini(self, **kwargs):
            src = make_ini(
                mailboxes_dir=base / "mail",
                state_dir=base / "state",
                nocreate_file=base / "nocreate",
                **kwargs,
            )
            self.ini = base / "chatmail.ini"
            self.ini.write_text(src.read_text())
            self.ini.chmod(0o644)
            for sub in ("mail", "sock", "state"):
                os.chown(base / sub, pw.pw_uid, pw.pw_gid)
            return self.ini

        def socket(self, name):
            return base / "sock" / name

    sandbox = Sandbox()
    sandbox.write_ini()
    yield sandbox
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def dovecot(mail_sandbox, start_daemon):
    """Start a private Dovecot 2.3 (IMAP on a free 127.0.0.1 port) whose
    passdb/userdb is the dict at ``auth_socket``, configured like the relay's
    (``password_key = passdb/%Ew"%Eu`` ...).  Optional ``lastlogin_socket``
    enables the last_login plugin, ``metadata_socket`` sets
    ``mail_attribute_dict`` with ``imap_metadata = yes``; ``extra`` is
    appended to dovecot.conf.  Returns an object with ``.port``, ``.conf``,
    ``.log`` (path) and ``.doveadm(*args)``."""
    procs = []

    def start(auth_socket, lastlogin_socket=None, metadata_socket=None, extra=""):
        base = mail_sandbox.base / f"dovecot{len(procs)}"
        (base / "run").mkdir(parents=True)
        (base / "state").mkdir()
        base.chmod(0o755)
        port = find_free_port()
        plugins = []
        settings = []
        if lastlogin_socket:
            plugins.append("last_login")
            settings.append(f"  last_login_dict = proxy:{lastlogin_socket}:lastlogin")
            settings.append("  last_login_precision = s")
        if metadata_socket:
            extra = f"mail_attribute_dict = proxy:{metadata_socket}:metadata\n" + extra
            extra += "\nprotocol imap {\n  imap_metadata = yes\n}\n"
        (base / "auth.conf.ext").write_text(AUTH_CONF.format(socket=auth_socket))
        conf = base / "dovecot.conf"
        conf.write_text(
            DOVECOT_CONF.format(
                name=f"cmtest-{base.parent.name}-{len(procs)}",
                base=base,
                user=mail_sandbox.user,
                port=port,
                imap_plugins=" ".join(plugins),
                plugin_settings="\n".join(settings),
                extra=extra,
            )
        )
        proc = start_daemon(["/usr/sbin/dovecot", "-F", "-c", conf], port=port)

        class Dovecot:
            pass

        d = Dovecot()
        d.port, d.conf, d.log, d.proc = port, conf, base / "dovecot.log", proc

        def doveadm(*args):
            return subprocess.run(
                ["doveadm", "-c", str(conf), *args],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )

        d.doveadm = doveadm
        procs.append(d)
        return d

    return start


def dkim_keypair() -> tuple[bytes, str]:
    """A throwaway 1024-bit RSA key: (PEM private key, DKIM TXT record)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
