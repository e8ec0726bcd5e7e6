"""chatmail_migrate (export / import / inspect) through the salt loader, on real
files and real tar archives in temporary directories.

A "relay" here is a directory tree laid out like a converged host (chatmail.ini,
DKIM keys and KeyTable, mailboxes, push queue, acmetool state); the service
accounts are stood in for by accounts this machine has (nobody, daemon).
"""

import grp
import io
import json
import os
import pathlib
import pwd
import shutil
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
VMAIL_GROUP = grp.getgrgid(pwd.getpwnam(VMAIL).pw_gid).gr_name
LOGIN_DAY = 1_700_000_000 - (1_700_000_000 % 86400)
# acmetool's ids: lower-case base32 of a SHA-256 (52 characters)
CERT_ID = "c" * 52
KEY_ID = "k" * 52


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
        # owned like on a converged host (the stand-in accounts)
        for path in (self.mail, *[self.mail / d for d in domains], self.state):
            shutil.chown(path, VMAIL, VMAIL_GROUP)
        shutil.chown(self.dkim, DKIM_USER, DKIM_USER)

    @property
    def kw(self):
        return {
            "ini": str(self.ini),
            "dkim_dir": str(self.dkim),
            "keytable": str(self.keytable),
            "acme_state_dir": str(self.acme),
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
            assert stat.S_IMODE(twin.stat().st_mode) == expected_mode(twin)
            assert twin.stat().st_uid == 65534
        assert (dst / "password").stat().st_mtime == LOGIN_DAY  # last-login day kept
    assert (new.state / "pending_notifications" / "a1b2").exists()
    assert not (new.state / "pending_notifications" / "c3d4").exists()
    # no staging directories left behind
    leftovers = [p for p in new.root.rglob(".chatmail-import-*")]
    assert leftovers == []


def expected_mode(path):
    """The mode the daemons give a file of an account (0700 dirs, 0600 files,
    Dovecot's empty uidvalidity marker 0444)."""
    if path.is_dir():
        return 0o700
    return 0o444 if path.name.startswith("dovecot-uidvalidity.") else 0o600


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
    cert_dir = old.acme / "certs" / CERT_ID
    key_dir = old.acme / "keys" / KEY_ID
    for path in (cert_dir, key_dir, old.acme / "live", old.acme / "accounts" / "acct"):
        path.mkdir(parents=True)
    (cert_dir / "fullchain").write_text("CERT")
    (key_dir / "privkey").write_text("KEY")
    (key_dir / "privkey").chmod(0o600)
    os.symlink(f"../../keys/{KEY_ID}/privkey", cert_dir / "privkey")
    os.symlink(f"../certs/{CERT_ID}", old.acme / "live" / DOMAIN)
    (old.acme / "accounts" / "acct" / "privkey").write_text("ACCOUNT")
    (cert_dir / "haproxy").mkdir()  # not part of what moves (acmetool's option)
    (old.acme / "certs" / "unrelated").mkdir()
    path = tmp_path / "acme.tar.gz"
    ret = migrate.export(str(path), stop_intake=False, **old.kw)
    assert ret["domains"][DOMAIN]["tls_mode"] == "acme"
    new = Relay(tmp_path / "new")
    run_import(migrate, str(path), reload=False, **new.kw)
    live = new.acme / "live" / DOMAIN
    assert os.readlink(live) == f"../certs/{CERT_ID}"
    assert (live / "fullchain").read_text() == "CERT"
    assert (live / "privkey").read_text() == "KEY"
    assert (new.acme / "accounts" / "acct" / "privkey").read_text() == "ACCOUNT"
    assert not (new.acme / "certs" / "unrelated").exists()
    assert not (new.acme / "certs" / CERT_ID / "haproxy").exists()
    # modes are acmetool's, owner root, whatever the old host had
    assert stat.S_IMODE((new.acme / "keys" / KEY_ID / "privkey").stat().st_mode) == 0o600
    assert stat.S_IMODE((new.acme / "keys").stat().st_mode) == 0o700
    assert stat.S_IMODE((new.acme / "accounts" / "acct").stat().st_mode) == 0o700
    assert stat.S_IMODE((cert_dir.parent).stat().st_mode) == 0o755
    assert stat.S_IMODE((new.acme / "certs" / CERT_ID / "fullchain").stat().st_mode) == 0o644


# ---------------------------------------------------------------- hostile archives


def manifest_bytes(domains=(DOMAIN,)):
    return json.dumps({"format": 1, "domains": {d: {} for d in domains}}).encode()


def build(path, members, manifest=True, first=None):
    """A tar.gz of (name, kind, payload[, mode]) members; kind: file, dir, sym,
    hard, fifo."""
    with tarfile.open(path, "w:gz") as tar:
        if first is not None:
            members = [first, *members]
        elif manifest:
            members = [("manifest.json", "file", manifest_bytes()), *members]
        for name, kind, payload, *mode in members:
            info = tarfile.TarInfo(name)
            info.mode = mode[0] if mode else 0o600 if kind == "file" else 0o700
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
ACME_CERT = [("acme/certs", "dir", None), (f"acme/certs/{CERT_ID}", "dir", None)]
ACME_LIVE = [("acme/live", "dir", None), (f"acme/live/{DOMAIN}", "sym", f"../certs/{CERT_ID}")]

HOSTILE = {
    "absolute": ([("/etc/passwd", "file", "x")], "absolute or malformed"),
    "dotdot": ([*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/../../../../x", "file", "x")], "'..'"),
    "dot": ([*ACCOUNT, (f"mail/{DOMAIN}/./{ALICE}", "dir", None)], "'..', '.'"),
    "symlink in mail": (
        [*ACCOUNT, (f"mail/{DOMAIN}/{ALICE}/cur", "sym", "/root")],
        "links are only allowed in acme",
    ),
    "acme link out": ([("acme/live", "sym", "../../../etc")], "not a link acmetool writes"),
    "acme absolute link": ([("acme/live", "sym", "/etc")], "not a link acmetool writes"),
    "file below link": (
        [*ACME_LIVE, (f"acme/live/{DOMAIN}/x", "file", "x")],
        "below a link",
    ),
    # each link on its own stays inside acme/ when read lexically; together
    # acme/etc is /etc (l1 = acme, l2 = its parent, ... l4 = /)
    "chained relative links": (
        [
            ("acme/l1", "sym", "."),
            ("acme/l2", "sym", "l1/.."),
            ("acme/l3", "sym", "l2/.."),
            ("acme/l4", "sym", "l3/.."),
            ("acme/etc", "sym", "l4/etc"),
        ],
        "not a link acmetool writes",
    ),
    "chained links below live/": (
        [
            ("acme/live", "dir", None),
            ("acme/live/a", "sym", "."),
            ("acme/live/b", "sym", "a/.."),
        ],
        "not a link acmetool writes",
    ),
    "live link with a detour": (
        [("acme/live", "dir", None), (f"acme/live/{DOMAIN}", "sym", f"../certs/../{CERT_ID}")],
        "not a link acmetool writes",
    ),
    "live link of a foreign name": (
        [("acme/live", "dir", None), ("acme/live/evil.test", "sym", f"../certs/{CERT_ID}")],
        "not a link acmetool writes",
    ),
    "privkey link out": (
        [*ACME_CERT, (f"acme/certs/{CERT_ID}/privkey", "sym", "../../../../etc/shadow")],
        "not a link acmetool writes",
    ),
    "certificate file as a link": (
        [*ACME_CERT, (f"acme/certs/{CERT_ID}/fullchain", "sym", f"../../keys/{KEY_ID}/privkey")],
        "not a link acmetool writes",
    ),
    "acme configuration": ([("acme/conf", "dir", None)], "not part of acmetool's certificates"),
    "acme desired": ([("acme/desired", "dir", None)], "not part of acmetool's certificates"),
    "unknown file in a certificate": (
        [*ACME_CERT, (f"acme/certs/{CERT_ID}/hook", "file", "x")],
        "not part of acmetool's certificates",
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


# ---------------------------------------------------------------- modes and links on the host


def test_archive_modes_are_never_installed(migrate, new, tmp_path):
    """0777 directories, 0666 password files and setuid bits in an archive:
    the import gives every file the mode and owner the relay's own daemons
    give it (doveauth, Dovecot, opendkim, acmetool), whatever the archive says."""
    addr_dir = f"mail/{DOMAIN}/{ALICE}"
    members = [
        (f"dkim/{DOMAIN}.opendkim.private", "file", pem_key(), 0o4666),
        (f"mail/{DOMAIN}", "dir", None, 0o777),
        (addr_dir, "dir", None, 0o1777),
        (f"{addr_dir}/password", "file", "{SHA512-CRYPT}$6$alice\n", 0o666),
        (f"{addr_dir}/enforceE2EEincoming", "file", "", 0o6777),
        (f"{addr_dir}/cur", "dir", None, 0o2777),
        (f"{addr_dir}/cur/1700000000.M1P1.old:2,S", "file", "mail\n", 0o4755),
        (f"{addr_dir}/dovecot-uidvalidity.6b029825", "file", "", 0o777),
        ("state/pending_notifications", "dir", None, 0o777),
        ("state/pending_notifications/a1b2", "file", json.dumps({"addr": ALICE}), 0o666),
        ("acme/accounts", "dir", None, 0o777),
        ("acme/accounts/acct", "dir", None, 0o777),
        ("acme/accounts/acct/privkey", "file", "ACCOUNT", 0o666),
        ("acme/keys", "dir", None, 0o777),
        (f"acme/keys/{KEY_ID}", "dir", None, 0o777),
        (f"acme/keys/{KEY_ID}/privkey", "file", "KEY", 0o4777),
        *[(n, k, p, 0o777) for n, k, p in ACME_CERT],
        (f"acme/certs/{CERT_ID}/fullchain", "file", "CERT", 0o6777),
    ]
    path = build(tmp_path / "modes.tar.gz", members)
    run_import(migrate, str(path), reload=False, **new.kw)
    vmail = pwd.getpwnam(VMAIL)
    user = new.mail / DOMAIN / ALICE
    want = {
        new.dkim / f"{DOMAIN}.opendkim.private": (0o600, pwd.getpwnam(DKIM_USER).pw_uid),
        new.mail / DOMAIN: (0o700, vmail.pw_uid),
        user: (0o700, vmail.pw_uid),
        user / "password": (0o600, vmail.pw_uid),
        user / "enforceE2EEincoming": (0o600, vmail.pw_uid),
        user / "cur": (0o700, vmail.pw_uid),
        user / "cur" / "1700000000.M1P1.old:2,S": (0o600, vmail.pw_uid),
        user / "dovecot-uidvalidity.6b029825": (0o444, vmail.pw_uid),
        new.state / "pending_notifications": (0o700, vmail.pw_uid),
        new.state / "pending_notifications" / "a1b2": (0o600, vmail.pw_uid),
        new.acme / "accounts": (0o700, 0),
        new.acme / "accounts" / "acct": (0o700, 0),
        new.acme / "accounts" / "acct" / "privkey": (0o600, 0),
        new.acme / "keys": (0o700, 0),
        new.acme / "keys" / KEY_ID: (0o700, 0),
        new.acme / "keys" / KEY_ID / "privkey": (0o600, 0),
        new.acme / "certs": (0o755, 0),
        new.acme / "certs" / CERT_ID: (0o755, 0),
        new.acme / "certs" / CERT_ID / "fullchain": (0o644, 0),
    }
    got = {p: (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid) for p in want}
    assert got == want
    # the whole mailbox tree: no group or other bits, no set-id bits anywhere
    for path in new.mail.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        assert mode & 0o7077 == 0 or path.name.startswith("dovecot-uidvalidity."), path


def test_host_links_below_a_data_directory_are_never_followed(migrate, new, archive, tmp_path):
    """Links a service account could plant in the directories it owns on the
    new host (its mailbox tree, opendkim's key directory): the import neither
    writes through them nor reads what they point at."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    # a DKIM key file that is a link: replaced as a link, the target untouched,
    # the backup is no hard link to the target
    key = new.dkim / f"{DOMAIN}.opendkim.private"
    key.unlink()
    os.symlink(secret, key)
    # a folder inside an account that is a link
    user = new.add_account(BOB, "{SHA512-CRYPT}$6$bob", messages=0)
    shutil.rmtree(user / ".Archive")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    os.symlink(elsewhere, user / ".Archive")
    with pytest.raises(CommandExecutionError, match="is not a directory"):
        run_import(migrate, str(archive), reload=False, **new.kw)
    assert list(elsewhere.iterdir()) == []
    os.unlink(user / ".Archive")
    ret = run_import(migrate, str(archive), reload=False, **new.kw)
    assert secret.read_text() == "root only\n"
    assert not key.is_symlink()
    (backup,) = ret["dkim"]["replaced"]
    assert pathlib.Path(backup["previous"]).is_symlink()
    assert os.stat(secret).st_nlink == 1
    assert list(elsewhere.iterdir()) == []


def test_password_file_that_is_a_link_is_not_read(migrate, new, archive, tmp_path):
    """The plan compares an existing password file with the archive's; a link
    there (to any file) is a conflict, not something to open."""
    user = new.add_account(ALICE, "{SHA512-CRYPT}$6$alice", messages=0)
    target = tmp_path / "same-content"
    target.write_text("{SHA512-CRYPT}$6$alice\n")
    (user / "password").unlink()
    os.symlink(target, user / "password")
    with pytest.raises(CommandExecutionError, match="password"):
        run_import(migrate, str(archive), reload=False, **new.kw)


def test_a_data_directory_swapped_for_a_link_is_refused(migrate, new, archive, tmp_path):
    """vmail owns the mailbox root's parent on a relay and could replace the
    root with a link to a root-owned directory: the import checks that each
    data directory belongs to its service account before writing below it."""
    victim = tmp_path / "etc"
    victim.mkdir()
    os.rename(new.mail, tmp_path / "real-mail")
    os.symlink(victim, new.mail)
    with pytest.raises(CommandExecutionError, match="owned by"):
        run_import(migrate, str(archive), reload=False, **new.kw)
    assert list(victim.iterdir()) == []
