"""The fuzz targets: a hypothesis strategy and a check per target.

``run_target(name, cases)`` runs ``cases`` generated inputs through the
target's check and returns a :class:`Result`; a check raises
:class:`Finding` (or anything else unexpected) for a violated invariant.
Hypothesis shrinks a finding to a small example, which is reported.
"""

from __future__ import annotations

import atexit
import copy
import importlib.util
import io
import json
import os
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fuzz import mime, oracle

ROOT = Path(__file__).resolve().parent.parent


def _scratch(prefix: str) -> Path:
    """A temporary directory removed when the process exits."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class Finding(AssertionError):
    """An invariant of a target does not hold."""


@dataclass
class Result:
    name: str
    cases: int = 0
    #: cases the target let through (a message accepted, an archive imported,
    #: a pillar built): shows the generators reach the interesting side
    accepted: int = 0
    seconds: float = 0.0
    findings: list = field(default_factory=list)


# --- filtermail ---------------------------------------------------------


class _Filtermail:
    """Handlers over a private configuration (DKIM off: its own tests cover
    it; here the message decisions are fuzzed)."""

    def __init__(self):
        from chatmaild.config import read_config
        from chatmaild.filtermail import IncomingHandler, OutgoingHandler

        self.base = _scratch("fuzz-filtermail-")
        ini = self.base / "chatmail.ini"
        ini.write_text(
            "[params]\nmail_domain = chat.example.org 192.0.2.7\n"
            f"mailboxes_dir = {self.base / 'mail'}\nstate_dir = {self.base / 'state'}\n"
            "filtermail_dkim_check = false\n"
        )
        self.config = read_config(ini)
        self.outgoing = OutgoingHandler(self.config)
        self.incoming = IncomingHandler(self.config)
        for addr in ("strict001@chat.example.org", "strict001@[192.0.2.7]"):
            marker = self.config.user_dir(addr) / "enforceE2EEincoming"
            marker.parent.mkdir(parents=True)
            marker.touch()


_FILTERMAIL = None


def _filtermail():
    global _FILTERMAIL
    if _FILTERMAIL is None:
        _FILTERMAIL = _Filtermail()
    return _FILTERMAIL


_ACCEPTED = [0]


def _decide(handler, *args) -> str | None:
    """None if the mail passes, else the refusal; anything but Reject is a
    finding (the daemon would answer 554, but a check must not crash)."""
    from chatmaild.filtermail import Reject

    try:
        handler.check(*args)
    except Reject as exc:
        return exc.args[0]
    except Exception as exc:
        raise Finding(f"check raised {type(exc).__name__}: {exc}") from exc
    _ACCEPTED[0] += 1
    return None


def check_outgoing(raw: bytes):
    fm = _filtermail()
    if _decide(fm.outgoing, mime.SENDER, [mime.RCPT], raw) is None:
        why = oracle.violation(raw, outgoing=True)
        if why:
            raise Finding(f"outgoing accepted a message with {why}: {raw[:400]!r}")


STRICT_SPELLINGS = [
    "strict001@chat.example.org",
    "STRICT001+x@Chat.Example.Org",
    "strict001@chat.example.org.",
    '"strict001"@chat.example.org',
    "strict001+a+b@chat.example.org",
    "strict001@[192.0.2.7]",
    "strict001@[IPv6:::1]",
    "strict001%chat.example.org@localhost",
    "chat.example.org!strict001@localhost",
    "strіct001@chat.example.org",
    "strict001\x00@chat.example.org",
]


@st.composite
def incoming_case(draw):
    raw = draw(st.one_of(mime.pgp_mime(outgoing=False), mime.plain_mail()))
    rcpts = draw(st.lists(st.sampled_from(STRICT_SPELLINGS), min_size=1, max_size=3))
    return raw, rcpts


def check_incoming(case):
    raw, rcpts = case
    fm = _filtermail()
    if _decide(fm.incoming, "zoe000001@other.example.net", rcpts, raw) is None:
        why = oracle.violation(raw, outgoing=False)
        if why:
            raise Finding(f"incoming to {rcpts} accepted a message with {why}: {raw[:400]!r}")


def check_fastpath(raw: bytes):
    from chatmaild.filtermail import encryption_problem, parse_message, single_from_address
    from chatmaild.filtermail_fastpath import encrypted_sender
    from chatmaild.pgpmime import outer_headers_problem

    for outgoing in (True, False):
        fast = encrypted_sender(raw, outgoing=outgoing)
        if fast is None:
            continue
        _ACCEPTED[0] += outgoing
        msg = parse_message(raw)
        full = None
        if encryption_problem(msg) is None and not (
            outgoing and outer_headers_problem(msg.items())
        ):
            full = single_from_address(msg)
        if fast != full:
            raise Finding(f"fast path said {fast!r}, full path {full!r}: {raw[:400]!r}")


# --- dict protocol (doveauth behind it) ------------------------------------


class _Dict:
    def __init__(self):
        from chatmaild.config import read_config
        from chatmaild.doveauth import AuthDictProxy

        self.base = _scratch("fuzz-dict-")
        ini = self.base / "chatmail.ini"
        ini.write_text(
            "[params]\nmail_domain = chat.example.org 192.0.2.7\n"
            f"mailboxes_dir = {self.base / 'mail'}\nstate_dir = {self.base / 'state'}\n"
            f"nocreate_file = {self.base / 'nocreate'}\nmax_load_1m = 100000\n"
            "min_available_memory = 0\nmin_free_disk_space = 0\n"
            "username_min_length = 1\nusername_max_length = 12\npassword_min_length = 1\n"
        )
        (self.base / "mail").mkdir()
        self.config = read_config(ini)
        self.proxy = AuthDictProxy(self.config)

    def outside_entries(self):
        """Paths that are no account directory or file of one."""
        from chatmaild.address import is_account_localpart

        bad = []
        for entry in self.base.iterdir():
            if entry.name not in ("mail", "chatmail.ini"):
                bad.append(entry)
        for domain in (self.base / "mail").iterdir():
            dc = self.config.for_domain(domain.name)
            if dc is None or dc.mail_domain != domain.name:
                bad.append(domain)
                continue
            for account in domain.iterdir():
                local, _, dom = account.name.rpartition("@")
                if dom != dc.address_domain or not is_account_localpart(local):
                    bad.append(account)
        return bad


_DICT = None
ADDR_CHARS = list("abc019._-+/@\\\"'\t\n\r\x00\x01 %![]:") + ["ä", "і", ".."]
field_text = st.lists(st.sampled_from(ADDR_CHARS), max_size=16).map("".join)


@st.composite
def dict_lines(draw) -> list[bytes]:
    from chatmaild.dictproxy import tabescape

    lines = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["passdb", "userdb", "iterate", "raw", "txn"]))
        local, dom = (
            draw(field_text),
            draw(st.sampled_from(["chat.example.org", "[192.0.2.7]", "CHAT.example.org", "x", ""])),
        )
        addr = f"{local}@{dom}"
        if kind == "passdb":
            pw = draw(field_text)
            quoted = pw.replace("\\", "\\\\").replace('"', '\\"')
            key = f'shared/passdb/{quoted}"{addr}'
            lines.append(f"L{tabescape(key)}\t{tabescape(addr)}".encode())
        elif kind == "userdb":
            lines.append(f"Lshared/userdb/{tabescape(addr)}\t{tabescape(addr)}".encode())
        elif kind == "iterate":
            lines.append(f"I{draw(st.integers(0, 63))}\t0\tshared/userdb/\t".encode())
        elif kind == "txn":
            lines.append(b"B1\t" + addr.encode("utf-8", "replace"))
            lines.append(b"S1\tshared/x\t" + draw(st.binary(max_size=8)).replace(b"\n", b""))
            lines.append(b"C1")
        else:
            lines.append(draw(st.binary(max_size=40)).replace(b"\n", b""))
    return lines


def check_dict(lines: list[bytes]):
    global _DICT
    if _DICT is None:
        _DICT = _Dict()
    wfile = io.BytesIO()
    _DICT.proxy.serve_connection(
        io.BytesIO(b"H3\t2\t0\t\tauth\n" + b"\n".join(lines) + b"\n"), wfile
    )
    replies = wfile.getvalue().split(b"\n")
    expected = sum(1 for line in lines if line[:1] in (b"L", b"C"))
    got = sum(1 for r in replies if r[:1] in (b"O", b"N", b"F"))
    if got < expected:
        raise Finding(f"{expected} replies due, {got} sent for {lines!r}")
    _ACCEPTED[0] += sum(r[:1] == b"O" for r in replies)
    bad = _DICT.outside_entries()
    if bad:
        raise Finding(f"written outside account directories: {bad[:3]} by {lines!r}")


# --- chatmail_migrate (inspect / import) -------------------------------------


class _Migrate:
    DOMAIN = "move.test"

    def __init__(self):
        import salt._logging.impl as salt_logging  # noqa: F401 - loads salt logging
        from saltfactories.utils.functional import Loaders

        from tests import saltopts

        self.base = _scratch("fuzz-migrate-")
        (self.base / "minion").mkdir()
        opts = saltopts.minion_opts(self.base / "minion", "fuzz.move.test")
        self.module = Loaders(opts).modules.chatmail_migrate
        self.template = self.base / "template"
        root = self.template / "relay"
        ini = root / "etc/chatmail/chatmail.ini"
        for sub in (
            "etc/chatmail",
            "etc/dkimkeys",
            "etc/opendkim",
            f"home/vmail/mail/{self.DOMAIN}",
        ):
            (root / sub).mkdir(parents=True)
        for sub in ("var/lib/chatmaild", "var/lib/acme"):
            (root / sub).mkdir(parents=True)
        (root / "etc/opendkim/KeyTable").write_text("")
        (self.template / "outside").mkdir()
        (self.template / "outside" / "keep").write_text("x")
        self.kw = {
            "ini": str(ini),
            "dkim_dir": str(root / "etc/dkimkeys"),
            "keytable": str(root / "etc/opendkim/KeyTable"),
            "acme_state_dir": str(root / "var/lib/acme"),
            "vmail_user": "nobody",
            "dkim_user": "daemon",
            "acme_user": "daemon",
        }
        ini.write_text(
            f"[params]\nmail_domain = {self.DOMAIN}\n"
            f"mailboxes_dir = {root / 'home/vmail/mail'}\n"
            f"state_dir = {root / 'var/lib/chatmaild'}\n"
            f"[domain:{self.DOMAIN}]\ntls_mode = self\n"
        )

        self.dirty = True

    def fresh(self) -> Path:
        """The relay tree as the template has it (copied anew only after an
        import that changed it: a refused import writes nothing)."""
        work = self.base / "work"
        if self.dirty:
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(self.template, work, symlinks=True)
            self.dirty = False
        return work


_MIGRATE = None
NAME_PARTS = ["mail", "move.test", "alice0001@move.test", "cur", "dkim", "state", "acme",
              "pending_notifications", "..", ".", "", "/etc", "move.test.opendkim.private",
              "password", "other.test", "a\\b", "x\x00y", "live", "evil"]  # fmt: skip


VALID_MEMBERS = [
    ("dir", "mail/move.test", b"", ""),
    ("dir", "mail/move.test/alice0001@move.test", b"", ""),
    ("file", "mail/move.test/alice0001@move.test/password", b"{SHA512-CRYPT}$6$x$y\n", ""),
    ("dir", "mail/move.test/alice0001@move.test/cur", b"", ""),
    ("file", "mail/move.test/alice0001@move.test/cur/1.M1:2,S", b"hello\n", ""),
    ("dir", "state/pending_notifications", b"", ""),
]


@st.composite
def tar_members(draw):
    good = {"format": 1, "domains": {"move.test": {"selectors": ["opendkim"]}}}
    manifest = draw(
        st.sampled_from([good, good, good, {"format": 1, "domains": {"../x": {}}}, {}, []])
    )
    members = [("file", "manifest.json", json.dumps(manifest).encode(), "")]
    # a valid archive, cut short at some point, plus 0..4 generated members
    members += VALID_MEMBERS[: draw(st.integers(0, len(VALID_MEMBERS)))]
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["file", "dir", "sym", "hard", "fifo", "chr"]))
        parts = draw(st.lists(st.sampled_from(NAME_PARTS), min_size=1, max_size=5))
        name = "/".join(parts)
        target = draw(st.sampled_from(["", "../../etc/passwd", "/etc/passwd", "x", "../x"]))
        members.append((kind, name, draw(st.binary(max_size=32)), target))
    return members


def _write_archive(path: Path, members):
    with tarfile.open(path, "w:gz") as tar:
        for kind, name, data, target in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
                continue
            info.type = {
                "dir": tarfile.DIRTYPE,
                "sym": tarfile.SYMTYPE,
                "hard": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
            }[kind]
            info.linkname = target
            tar.addfile(info)


def _snapshot(root: Path) -> dict:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st_ = path.lstat()
            # a directory's mtime moves when a staging dir comes and goes
            mtime = None if os.path.isdir(path) and not path.is_symlink() else st_.st_mtime_ns
            out[str(path)] = (st_.st_mode, st_.st_size, mtime, st_.st_uid)
    return out


def check_migrate(members):
    from salt.exceptions import CommandExecutionError

    global _MIGRATE
    if _MIGRATE is None:
        _MIGRATE = _Migrate()
    work = _MIGRATE.fresh()
    archive = work / "archive.tar.gz"
    _write_archive(archive, members)
    outside_before = _snapshot(work / "outside")
    relay_before = _snapshot(work / "relay")
    kw = {k: v.replace(str(_MIGRATE.template), str(work)) for k, v in _MIGRATE.kw.items()}
    for call in ("inspect", "import"):
        try:
            if call == "inspect":
                _MIGRATE.module.inspect(str(archive))
            else:
                _MIGRATE.dirty = True
                getattr(_MIGRATE.module, "import")(str(archive), reload=False, **kw)
                _ACCEPTED[0] += 1
        except CommandExecutionError:
            if call == "import" and _snapshot(work / "relay") == relay_before:
                _MIGRATE.dirty = False
            elif call == "import":
                _MIGRATE.dirty = True
                raise Finding(f"a refused import changed the relay tree: {members!r}") from None
        except Exception as exc:
            raise Finding(f"{call} raised {type(exc).__name__}: {exc} on {members!r}") from exc
    if _snapshot(work / "outside") != outside_before:
        raise Finding(f"import wrote outside the relay tree: {members!r}")
    allowed = {"relay", "outside", "archive.tar.gz"}
    extra = [p.name for p in work.iterdir() if p.name not in allowed]
    if extra:
        raise Finding(f"import left {extra} next to the relay tree: {members!r}")
    for path in (work / "relay").rglob("*"):
        if path.is_symlink():
            resolved = path.resolve()
            if not str(resolved).startswith(str(work / "relay")):
                raise Finding(f"link {path} points out of the relay tree: {members!r}")


# --- chatmail_config.build (the pillar validator) ------------------------------


class _Pillar:
    def __init__(self):
        import yaml

        spec = importlib.util.spec_from_file_location(
            "chatmail_config_fuzz", ROOT / "_modules" / "chatmail_config.py"
        )
        self.cc = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(self.cc)
        self.defaults = yaml.safe_load((ROOT / "salt/chatmail/defaults.yaml").read_text())
        self.example = yaml.safe_load((ROOT / "pillar.example").read_text())["chatmail"]


_PILLAR = None
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["500M", "-1", "1e9", "chat.example.org", "_x.test", "1.2.3.4", "::1", "../x",
                     "/etc", "auto", "self", "acme", "external", "ca", "", " ", "\n"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def _paths(tree, prefix=()):
    yield prefix
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _paths(value, (*prefix, key))


@st.composite
def pillars(draw):
    global _PILLAR
    if _PILLAR is None:
        _PILLAR = _Pillar()
    pillar = copy.deepcopy(_PILLAR.example)
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(pillar))
        path = draw(st.sampled_from(paths))
        if not path:
            pillar = draw(values)
            if not isinstance(pillar, dict):
                break
            continue
        node = pillar
        for key in path[:-1]:
            node = node[key]
        action = draw(st.sampled_from(["set", "set", "delete", "add"]))
        if action == "delete":
            del node[path[-1]]
        elif action == "add" and isinstance(node[path[-1]], dict):
            node[path[-1]][draw(st.text(max_size=10))] = draw(values)
        else:
            node[path[-1]] = draw(values)
    return pillar


def check_pillar(pillar):
    cc = _PILLAR.cc
    try:
        result = cc.build(_PILLAR.defaults, {}, pillar)
    except cc.ChatmailConfigError:
        return
    except Exception as exc:
        raise Finding(f"build raised {type(exc).__name__}: {exc} on {pillar!r}"[:2000]) from exc
    if not isinstance(result, dict):
        raise Finding(f"build returned {type(result).__name__}")
    _ACCEPTED[0] += 1


# --- registry and runner --------------------------------------------------------

TARGETS = {
    "filtermail_outgoing": (lambda: mime.pgp_mime(outgoing=True), check_outgoing),
    "filtermail_incoming": (incoming_case, check_incoming),
    "fastpath": (lambda: mime.pgp_mime(outgoing=True), check_fastpath),
    "dictproxy": (dict_lines, check_dict),
    "migrate": (tar_members, check_migrate),
    "pillar": (pillars, check_pillar),
}


def run_target(name: str, cases: int, seed: int | None = None) -> Result:
    make_strategy, check = TARGETS[name]
    result = Result(name)

    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=seed is not None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
        print_blob=False,
    )
    @given(make_strategy())
    def run(example):
        result.cases += 1
        check(example)

    started = time.monotonic()
    _ACCEPTED[0] = 0
    try:
        run()
    except Exception as exc:  # hypothesis re-raises the shrunk finding
        result.findings.append(f"{type(exc).__name__}: {exc}"[:3000])
    result.seconds = time.monotonic() - started
    result.accepted = _ACCEPTED[0]
    return result
