"""chatmail_migrate (export / import / inspect) through the salt loader, on real
files and real tar archives in temporary directories.

A "relay" here is a directory tree laid out like a converged host (chatmail.ini,
DKIM keys and KeyTable, mailboxes, push queue, acmetool state); the service
accounts are stood in for by accounts this machine has (nobody, daemon).
"""

import io
import json
import os
import pathlib
import stat
import tarfile

import pytest
import salt._logging.impl as salt_logging
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from salt.exceptions import CommandExecutionError
from saltfactories.utils.functional import Loaders

from tests import saltopts

DOMAIN = "move.test"
OTHER = "_other.test"
ALICE = f"alice0001@{DOMAIN}"
BOB = f"bob000002@{DOMAIN}"
VMAIL, DKIM_USER = "nobody", "daemon"
LOGIN_DAY = 1_700_000_000 - (1_700_000_000 % 86400)


@pytest.fixture(scope="module")
def migrate(tmp_path_factory):
    opts = saltopts.minion_opts(tmp_path_factory.mktemp("minion"), "old.move.test")
    loaders = Loaders(opts)
    yield loaders.modules.chatmail_migrate
    # flush salt's buffered early log records while pytest still captures
    salt_logging.shutdown_temp_handler()


def run_import(migrate, *args, **kwargs):
    """chatmail_migrate.import (a Python keyword, hence getattr)."""
    return getattr(migrate, "import")(*args, **kwargs)


def pem_key():
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


class Relay:
    """Paths of one fake host and the keyword arguments pointing the module at them."""

    def __init__(self, root: pathlib.Path, domains=(DOMAIN,)):
        self.root = root
        self.ini = root / "etc/chatmail/chatmail.ini"
        self.dkim = root / "etc/dkimkeys"
        self.keytable = root / "etc/opendkim/KeyTable"
        self.mail = root / "home/vmail/mail"
        self.state = root / "var/lib/chatmaild"
        self.acme = root / "var/lib/acme"
        for path in (self.ini.parent, self.dkim, self.keytable.parent, self.mail, self.state):
            path.mkdir(parents=True, exist_ok=True)
        sections = "".join(f"\n[domain:{d}]\ntls_mode = self\n" for d in domains)
        self.ini.write_text(
            "[params]\n"
            f"mail_domain = {' '.join(domains)}\n"
            f"mailboxes_dir = {self.mail}\n"
            f"state_dir = {self.state}\n" + sections
        )
        self.keytable.write_text(
            "# comment\n"
            + "".join(
                f"opendkim._domainkey.{d} {d}:opendkim:{self.dkim}/{d}.opendkim.private\n"
                for d in domains
            )
        )
        for d in domains:
            (self.mail / d).mkdir(mode=0o700, exist_ok=True)

    @property
    def kw(self):
        return {
            "ini": str(self.ini),
            "dkim_dir": str(self.dkim),
            "keytable": str(self.keytable),
            "acme_dir": str(self.acme),
            "vmail_user": VMAIL,
            "dkim_user": DKIM_USER,
        }

    def add_key(self, domain=DOMAIN, selector="opendkim", pem=None):
        path = self.dkim / f"{domain}.{selector}.private"
        path.write_bytes(pem or pem_key())
        path.chmod(0o600)
        return path

    def add_account(self, addr, password_hash, messages=1):
        user = self.mail / addr.split("@")[1].strip("[]") / addr
        for sub in ("cur", "new", "tmp", ".Archive/cur", ".Archive/new", ".Archive/tmp"):
            (user / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        pw = user / "password"
        pw.write_text(password_hash + "\n")
        pw.chmod(0o600)
        os.utime(pw, (LOGIN_DAY, LOGIN_DAY))
        (user / "enforceE2EEincoming").write_text("")
        (user / "metadata.json").write_text(json.dumps({"devicetoken": {"tok-1": 1}}))
        for n in range(messages):
            (user / "cur" / f"17000000{n}.M1P1.old,S=10:2,S").write_text(f"message {n}\n")
        (user / ".Archive" / "cur" / "1700000099.M2P1.old:2,").write_text("archived\n")
        (user / "dovecot-uidvalidity.6b029825").write_text("")
        (user / "dovecot-uidvalidity.6b029825").chmod(0o444)
        return user

    def add_pending(self, addr, name):
        queue = self.state / "pending_notifications"
        queue.mkdir(exist_ok=True)
        (queue / name).write_text(json.dumps({"addr": addr, "token": "t", "created": 1.0}))

    def snapshot(self):
        """Every path below root with type, mode, owner and content digest."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            for name in dirnames + filenames:
                path = pathlib.Path(dirpath) / name
                st = path.lstat()
                data = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
                link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
                out[str(path)] = (st.st_mode, st.st_uid, st.st_gid, data, link)
        return out


@pytest.fixture
def old(tmp_path):
    relay = Relay(tmp_path / "old")
    relay.add_key()
    relay.add_account(ALICE, "{SHA512-CRYPT}$6$alice")
    relay.add_account(BOB, "{SHA512-CRYPT}$6$bob", messages=2)
    relay.add_pending(ALICE, "a1b2")
    relay.add_pending("someone@elsewhere.test", "c3d4")
    return relay


@pytest.fixture
def new(tmp_path):
    relay = Relay(tmp_path / "new")
    relay.add_key()  # the key the first highstate made: never published
    return relay


@pytest.fixture
def archive(migrate, old, tmp_path):
    path = tmp_path / "move.tar.gz"
    migrate.export(str(path), stop_intake=False, **old.kw)
    return path


def test_export_writes_private_archive_with_manifest(migrate, old, tmp_path):
    path = tmp_path / "out.tar.gz"
    ret = migrate.export(str(path), stop_intake=False, **old.kw)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ret["path"] == str(path)
    info = ret["domains"][DOMAIN]
    assert info["accounts"] == 2
    assert info["dkim_selectors"] == ["opendkim"]
    assert info["active_selector"] == "opendkim"
    assert ret["pending_notifications"] == 1  # the foreign address stays behind
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert names[0] == "manifest.json"
    assert f"dkim/{DOMAIN}.opendkim.private" in names
    assert f"mail/{DOMAIN}/{ALICE}/password" in names
    assert f"mail/{DOMAIN}/{BOB}/.Archive/cur/1700000099.M2P1.old:2," in names
    assert "state/pending_notifications/a1b2" in names
    assert "state/pending_notifications/c3d4" not in names
    assert not [n for n in names if n.startswith("/") or ".." in n.split("/")]
    manifest = migrate.inspect(str(path))
    assert manifest["format"] == 1
    assert manifest["source"]["id"] == "old.move.test"
    assert manifest["source"]["chatmail_salt"]["version"]
    assert manifest["domains"][DOMAIN]["files"] == info["files"]


def test_export_refuses_existing_path_and_data_dirs(migrate, old, tmp_path):
    existing = tmp_path / "exists.tar.gz"
    existing.write_text("keep me")
    with pytest.raises(CommandExecutionError, match="exists"):
        migrate.export(str(existing), stop_intake=False, **old.kw)
    assert existing.read_text() == "keep me"
    with pytest.raises(CommandExecutionError, match="inside mailboxes_dir"):
        migrate.export(str(old.mail / "x.tar.gz"), stop_intake=False, **old.kw)
    with pytest.raises(CommandExecutionError, match="nothing to export for nope.test"):
        migrate.export(str(tmp_path / "y.tar.gz"), domains="nope.test", stop_intake=False, **old.kw)
    assert not (tmp_path / "y.tar.gz").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".chatmail-export-")]


def test_import_restores_keys_accounts_mail_and_queue(migrate, old, new, archive):
    ret = run_import(migrate, str(archive), reload=False, **new.kw)
    assert ret["accounts"] == {"new": 2, "existing": 0}
    key = new.dkim / f"{DOMAIN}.opendkim.private"
    assert key.read_bytes() == (old.dkim / key.name).read_bytes()
    st = key.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 1 and st.st_gid == 1  # daemon stands in for opendkim
    # the key the new host had made is kept aside, never silently lost
    (backup,) = ret["dkim"]["replaced"]
    assert pathlib.Path(backup["previous"]).exists()
    assert not pathlib.Path(backup["previous"]).name.endswith(".private")
    for addr in (ALICE, BOB):
        src, dst = old.mail / DOMAIN / addr, new.mail / DOMAIN / addr
        for path in src.rglob("*"):
            twin = dst / path.relative_to(src)
            assert twin.exists(), twin
            if path.is_file():
                assert twin.read_bytes() == path.read_bytes()
                assert stat.S_IMODE(twin.stat().st_mode) == stat.S_IMODE(path.stat().st_mode)
            assert twin.stat().st_uid == 65534
        assert (dst / "password").stat().st_mtime == LOGIN_DAY  # last-login day kept
    assert (new.state / "pending_notifications" / "a1b2").exists()
    assert not (new.state / "pending_notifications" / "c3d4").exists()
    # no staging directories left behind
    leftovers = [p for p in new.root.rglob(".chatmail-import-*")]
    assert leftovers == []


def test_import_twice_changes_nothing(migrate, new, archive):
    run_import(migrate, str(archive), reload=False, **new.kw)
    before = new.snapshot()
    ret = run_import(migrate, str(archive), reload=False, **new.kw)
    assert ret["accounts"] == {"new": 0, "existing": 2}
    assert ret["dkim"]["replaced"] == [] and ret["dkim"]["added"] == []
    assert ret["mail"]["replaced"] == [] and ret["mail"]["kept"] == []
    assert new.snapshot() == before


def test_import_refuses_a_different_password_unless_forced(migrate, new, archive):
    new.add_account(ALICE, "{SHA512-CRYPT}$6$someone-else", messages=0)
    before = new.snapshot()
    with pytest.raises(CommandExecutionError, match=f"account {ALICE} exists here"):
        run_import(migrate, str(archive), reload=False, **new.kw)
    assert new.snapshot() == before  # nothing written, not even BOB or the key
    ret = run_import(migrate, str(archive), force=True, reload=False, **new.kw)
    assert (new.mail / DOMAIN / ALICE / "password").read_text() == "{SHA512-CRYPT}$6$alice\n"
    assert str(new.mail / DOMAIN / ALICE / "password") in ret["mail"]["replaced"]
    assert (new.mail / DOMAIN / BOB / "password").exists()


def test_import_merges_into_an_existing_account(migrate, new, archive):
    """Same password (the user already logged in on the new host): mail from
    the archive is added, files the host already has differently are kept."""
    user = new.add_account(ALICE, "{SHA512-CRYPT}$6$alice", messages=0)
    (user / "metadata.json").write_text('{"devicetoken": {"tok-new": 2}}')
    os.utime(user / "password", (LOGIN_DAY, LOGIN_DAY))
    ret = run_import(migrate, str(archive), reload=False, **new.kw)
    assert ret["accounts"] == {"new": 1, "existing": 1}
    assert (user / "cur" / "170000000.M1P1.old,S=10:2,S").read_text() == "message 0\n"
    assert (user / "metadata.json").read_text() == '{"devicetoken": {"tok-new": 2}}'
    assert str(user / "metadata.json") in ret["mail"]["kept"]


def test_import_refuses_domains_the_host_does_not_serve(migrate, tmp_path, archive):
    other = Relay(tmp_path / "other", domains=(OTHER,))
    before = other.snapshot()
    with pytest.raises(CommandExecutionError, match=f"{DOMAIN} not configured on this host"):
        run_import(migrate, str(archive), reload=False, **other.kw)
    assert other.snapshot() == before


def test_import_needs_the_service_accounts(migrate, new, archive):
    kw = dict(new.kw, vmail_user="no-such-user-here")
    before = new.snapshot()
    with pytest.raises(CommandExecutionError, match="converge it first"):
        run_import(migrate, str(archive), reload=False, **kw)
    assert new.snapshot() == before


def test_acme_certificate_travels_with_its_links(migrate, tmp_path):
    old = Relay(tmp_path / "old")
    old.add_key()
    cert_dir = old.acme / "certs" / "c1"
    key_dir = old.acme / "keys" / "k1"
    for path in (cert_dir, key_dir, old.acme / "live", old.acme / "accounts" / "acct"):
        path.mkdir(parents=True)
    (cert_dir / "fullchain").write_text("CERT")
    (key_dir / "privkey").write_text("KEY")
    (key_dir / "privkey").chmod(0o600)
    os.symlink("../../keys/k1/privkey", cert_dir / "privkey")
    os.symlink("../certs/c1", old.acme / "live" / DOMAIN)
    (old.acme / "accounts" / "acct" / "privkey").write_text("ACCOUNT")
    (old.acme / "certs" / "unrelated").mkdir()
    path = tmp_path / "acme.tar.gz"
    ret = migrate.export(str(path), stop_intake=False, **old.kw)
    assert ret["domains"][DOMAIN]["tls_mode"] == "acme"
    new = Relay(tmp_path / "new")
    run_import(migrate, str(path), reload=False, **new.kw)
    live = new.acme / "live" / DOMAIN
    assert os.readlink(live) == "../certs/c1"
    assert (live / "fullchain").read_text() == "CERT"
    assert (live / "privkey").read_text() == "KEY"
    assert (new.acme / "accounts" / "acct" / "privkey").read_text() == "ACCOUNT"
    assert not (new.acme / "certs" / "unrelated").exists()


# ---------------------------------------------------------------- hostile archives


def manifest_bytes(domains=(DOMAIN,)):
    return json.dumps({"format": 1, "domains": {d: {} for d in domains}}).encode()


def build(path, members, manifest=True, first=None):
    """A tar.gz of (name, kind, payload) members; kind: file, dir, sym, hard, fifo."""
    with tarfile.open(path, "w:gz") as tar:
        if first is not None:
            members = [first, *members]
        elif manifest:
            members = [("manifest.json", "file", manifest_bytes()), *members]
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.mode = 0o600 if kind == "file" else 0o700
            data = None
            if kind == "file":
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "sym":
                info.type, info.linkname = tarfile.SYMTYPE, payload
            elif kind == "hard":
                info.type, info.linkname = tarfile.LNKTYPE, payload
            elif kind == "fifo":
                info.type = tarfile.FIFOTYPE
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


ACCOUNT = [
    (f"mail/{DOMAIN}", "dir", None),
    (f"mail/{DOMAIN}/{ALICE}", "dir", None),
]

HOSTILE = {
    "absolute": ([("/etc/passwd", "file", "x")], "absolute or malformed"),
    "dotdot": ([*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/../../../../x", "file", "x")], "'..'"),
    "dot": ([*ACCOUNT, (f"mail/{DOMAIN}/./{ALICE}", "dir", None)], "'..', '.'"),
    "symlink in mail": (
        [*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/cur", "sym", "/root")],
        "links are only allowed in acme",
    ),
    "acme link out": ([("acme/live", "sym", "../../../etc")], "it leaves acme"),
    "acme absolute link": ([("acme/live", "sym", "/etc")], "it leaves acme"),
    "file below link": (
        [("acme/live", "sym", "certs"), ("acme/live/x", "file", "x")],
        "below a link",
    ),
    "hardlink": ([*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/password", "hard", "/etc/shadow")], "only"),
    "fifo": ([*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/password", "fifo", None)], "only files"),
    "undeclared domain": ([("mail/evil.test", "dir", None)], "does not list"),
    "bad account name": (
        [(f"mail/{DOMAIN}", "dir", None), (f"mail/{DOMAIN}/root", "dir", None)],
        "not an address",
    ),
    "foreign dkim key": ([("dkim/evil.test.opendkim.private", "file", "x")], "no DKIM key"),
    "dkim not a key": ([(f"dkim/{DOMAIN}.opendkim.private", "file", "garbage")], "no private key"),
    "no parent dir": ([(f"mail/{DOMAIN}/{ALICE}/password", "file", "x")], "without) its directory"),
    "duplicate": ([*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}", "dir", None)], "appears twice"),
    "unknown section": ([("etc", "dir", None)], "unexpected member"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_and_nothing_written(migrate, new, tmp_path, case):
    members, message = HOSTILE[case]
    path = build(tmp_path / "evil.tar.gz", members)
    before = new.snapshot()
    with pytest.raises(CommandExecutionError) as err:
        run_import(migrate, str(path), reload=False, **new.kw)
    assert message in str(err.value)
    assert new.snapshot() == before
    assert not (tmp_path / "x").exists()


def test_archive_without_manifest_first_is_refused(migrate, new, tmp_path):
    path = build(tmp_path / "a.tar.gz", ACCOUNT, manifest=False)
    with pytest.raises(CommandExecutionError, match="first member must be manifest.json"):
        migrate.inspect(str(path))
    path = build(tmp_path / "b.tar.gz", [], first=("manifest.json", "file", b"{not json"))
    with pytest.raises(CommandExecutionError, match="not JSON"):
        run_import(migrate, str(path), reload=False, **new.kw)
    path = build(tmp_path / "c.tar.gz", [], first=("manifest.json", "file", b'{"format": 9}'))
    with pytest.raises(CommandExecutionError, match="format 1"):
        migrate.inspect(str(path))


def test_garbage_is_refused(migrate, new, tmp_path):
    path = tmp_path / "garbage.tar.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00garbage" * 50)
    with pytest.raises(CommandExecutionError, match="unreadable archive"):
        run_import(migrate, str(path), reload=False, **new.kw)
    with pytest.raises(CommandExecutionError, match="no such archive"):
        migrate.inspect(str(tmp_path / "missing.tar.gz"))


def test_target_path_through_a_link_is_refused(migrate, new, archive, tmp_path):
    """An account directory on the host that is a symlink is never written through."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, new.mail / DOMAIN / ALICE)
    with pytest.raises(CommandExecutionError, match="is not a directory"):
        run_import(migrate, str(archive), reload=False, **new.kw)
    assert list(elsewhere.iterdir()) == []


def test_import_is_exposed_as_import(migrate):
    assert callable(getattr(migrate, "import"))


def test_export_of_one_domain_leaves_the_others(migrate, tmp_path):
    relay = Relay(tmp_path / "two", domains=(DOMAIN, OTHER))
    relay.add_key(DOMAIN)
    relay.add_key(OTHER)
    relay.add_account(ALICE, "{SHA512-CRYPT}$6$alice")
    relay.add_account(f"carol0003@{OTHER}", "{SHA512-CRYPT}$6$carol")
    relay.add_pending(f"carol0003@{OTHER}", "e5f6")
    path = tmp_path / "one.tar.gz"
    ret = migrate.export(str(path), domains=DOMAIN, stop_intake=False, **relay.kw)
    assert list(ret["domains"]) == [DOMAIN]
    with tarfile.open(path) as tar:
        names = tar.getnames()
    assert not [n for n in names if OTHER in n]
    assert list(migrate.inspect(str(path))["domains"]) == [DOMAIN]


def test_ip_only_domain_moves_without_dkim(migrate, tmp_path):
    ip = "10.77.0.5"
    addr = f"dave00004@[{ip}]"
    old = Relay(tmp_path / "old", domains=(ip,))
    old.add_account(addr, "{SHA512-CRYPT}$6$dave")
    path = tmp_path / "ip.tar.gz"
    ret = migrate.export(str(path), stop_intake=False, **old.kw)
    assert ret["domains"][ip]["accounts"] == 1
    assert ret["domains"][ip]["dkim_selectors"] == []
    new = Relay(tmp_path / "new", domains=(ip,))
    run_import(migrate, str(path), reload=False, **new.kw)
    assert (new.mail / ip / addr / "password").read_text() == "{SHA512-CRYPT}$6$dave\n"
