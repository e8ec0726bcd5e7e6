"""Moving a relay to a new host (ACCEPTANCE.md, Operating) on two real systemd hosts.

The old host is converged for ``move.test``; two accounts are made by IMAP
login, one sends the other an encrypted mail, the recipient stores a push
token (SETMETADATA).  ``chatmail_migrate.export`` writes the archive on the old
host (which then takes no more mail), the archive travels old host -> CI
machine -> new host (``docker cp``), ``chatmail_migrate.import`` restores it on
the new host, which was converged with the same pillar, and a highstate
follows.

Clients keep working without re-setup: they know the relay only by its
domain, their address and their password, and find their mail by IMAP UID.
So the test checks, against the new host, that the same addresses log in
with the same passwords (and a wrong password still fails), the mail is
there under its old UID, the push token is still stored, the DKIM key is the
old one (identical public key in ``chatmail_dkim`` and the zone fragment, so
the published record stays valid) and new mail is signed with it, and that a
further highstate changes nothing.  Only DNS moves to the new address.
"""

import email
import imaplib
import io
import json
import re
import socket
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from chatmaild.user import encrypt_password

from tests.harness import hosts
from tests.harness.docker import docker as docker_cli
from tests.hosts.test_relay import (
    dkim_signed,
    encrypted_message,
    imap_login,
    new_credentials,
    submit,
)
from tests.saltopts import write_pillar_tree

pytestmark = pytest.mark.hosts

DOMAIN = "move.test"
OLD = "cmsalt-migrate-old"
NEW = "cmsalt-migrate-new"
ARCHIVE = "/root/move.tar.gz"
MAILBOXES = "/home/vmail/mail"
TOKEN_ENTRY = "/private/devicetoken"
PILLAR = {
    # test hosts see the load average of the shared CI machine
    "params": {"max_load_1m": 1000},
    "domains": {DOMAIN: {}},
}

for _name in ("GETMETADATA", "SETMETADATA"):
    imaplib.Commands.setdefault(_name, ("AUTH", "SELECTED"))


@pytest.fixture
def two_hosts(harness, tmp_path):
    pillar_dir = write_pillar_tree(tmp_path / "pillar", PILLAR)
    specs = [
        {"name": name, "fqdn": DOMAIN, "ip": "auto", "pillar_dir": pillar_dir}
        for name in (OLD, NEW)
    ]
    booted = []
    try:
        booted = hosts.boot_many(specs)
        yield booted
    finally:
        for name in (OLD, NEW):
            hosts.destroy(name)


def salt_call(host, *args):
    """A salt-call's return value (fails the test on a non-zero exit)."""
    proc = hosts.salt_call(host, *args, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stdout[-3000:]} {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)["local"]


def metadata(imap, command, args):
    typ, data = imap._simple_command(command, args)
    assert typ == "OK", data
    flat = []
    for item in imap._untagged_response(typ, data, "METADATA")[1]:
        flat.extend(item if isinstance(item, tuple) else [item])
    return b" ".join(x for x in flat if x).decode("utf-8", "replace")


def fetch_inbox(ip, addr, password, count, timeout=60):
    """{uid: message} of INBOX once it holds `count` messages."""
    imap = imap_login(ip, addr, password)
    try:
        deadline = time.monotonic() + timeout
        while True:
            imap.select("INBOX")
            _typ, data = imap.uid("SEARCH", None, "ALL")
            uids = data[0].split()
            if len(uids) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        out = {}
        for uid in uids:
            _typ, fetched = imap.uid("FETCH", uid, "(RFC822)")
            out[int(uid)] = email.message_from_bytes(fetched[0][1])
        return out
    finally:
        imap.logout()


def send(ip, sender, password, rcpt):
    message_id = f"{sender.split('@')[0]}.{time.time_ns()}@{DOMAIN}"
    text = encrypted_message(sender, rcpt)
    text = re.sub(r"(?m)^Message-ID: .*$", f"Message-ID: <{message_id}>", text)
    submit(ip, sender, password, [rcpt], text)
    return message_id


def pending_for(host, addr, wait=0):
    """Files in chatmaild's push queue for addr (polled up to `wait` seconds)."""
    script = (
        "cd /var/lib/chatmaild/pending_notifications 2>/dev/null && "
        f"grep -l -F '\"{addr}\"' -- * 2>/dev/null || true"
    )
    deadline = time.monotonic() + wait
    while True:
        found = host.sh(script).stdout.split()
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(1)


def zone_dkim(host):
    """The DKIM TXT value in the host's zone fragment (strings joined)."""
    zone = host.exec("cat", f"/etc/chatmail/zones/{DOMAIN}.zone").stdout
    (line,) = [x for x in zone.splitlines() if x.startswith(f"opendkim._domainkey.{DOMAIN}.")]
    return "".join(re.findall(r'"([^"]*)"', line))


@pytest.mark.timeout(2400)
def test_move_relay_keeps_accounts_mail_and_dkim_key(two_hosts):
    old, new = two_hosts
    for result in hosts.converge_many([old, new]):
        assert result.ok, result.summary()

    # --- the old relay in use
    alice, alice_pw = new_credentials(DOMAIN)
    bob, bob_pw = new_credentials(DOMAIN)
    imap_login(old.ip, alice, alice_pw).logout()
    imap = imap_login(old.ip, bob, bob_pw)
    try:
        metadata(imap, "SETMETADATA", f'INBOX ({TOKEN_ENTRY} "tok-moving-device")')
        # a subfolder with a message of its own (Maildir ".Archive/")
        assert imap.create("Archive")[0] == "OK"
        archived = b"From: <%s>\r\nSubject: kept\r\n\r\nfiled away\r\n" % bob.encode()
        assert imap.append("Archive", None, None, archived)[0] == "OK"
    finally:
        imap.logout()
    message_id = send(old.ip, alice, alice_pw, bob)
    before = fetch_inbox(old.ip, bob, bob_pw, 1)
    # the push gateway is unreachable from test hosts: the notification for
    # bob's new mail waits in chatmaild's queue, and must move with the relay
    assert pending_for(old, bob, wait=60)
    assert [m["Message-ID"] for m in before.values()] == [f"<{message_id}>"]
    old_public = salt_call(old, "chatmail_dkim.public_key", DOMAIN)
    assert old_public
    old_key = old.exec("cat", f"/etc/dkimkeys/{DOMAIN}.opendkim.private").stdout
    new_key_before = new.exec("cat", f"/etc/dkimkeys/{DOMAIN}.opendkim.private").stdout
    assert new_key_before != old_key  # the new host's first highstate made its own
    bob_password_file = old.exec(
        "stat", "-c", "%Y %U:%G %a", f"{MAILBOXES}/{DOMAIN}/{bob}/password"
    )

    # --- export: intake stops, the archive is private
    exported = salt_call(old, "chatmail_migrate.export", ARCHIVE)
    assert exported["domains"][DOMAIN]["accounts"] == 2
    assert exported["pending_notifications"] >= 1
    assert set(exported["domains"][DOMAIN]["dkim_selectors"]) == {"opendkim"}
    assert not old.is_active("postfix") and not old.is_active("dovecot")
    for port in (25, 993):  # senders and clients retry later, nothing lands here
        with pytest.raises(OSError):
            socket.create_connection((old.ip, port), timeout=10).close()
    assert old.exec("stat", "-c", "%a %U", ARCHIVE).stdout.split() == ["600", "root"]
    manifest = salt_call(old, "chatmail_migrate.inspect", ARCHIVE)
    assert list(manifest["domains"]) == [DOMAIN]

    # --- old host -> CI machine -> new host
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "move.tar.gz"
        docker_cli("cp", f"{old.name}:{ARCHIVE}", str(local))
        docker_cli("cp", str(local), f"{new.name}:{ARCHIVE}")
    new.exec("chmod", "0600", ARCHIVE)

    imported = salt_call(new, "chatmail_migrate.import", ARCHIVE)
    assert imported["accounts"] == {"new": 2, "existing": 0}
    assert len(imported["dkim"]["replaced"]) == 1
    assert "opendkim" in imported["restarted"]
    # importing the same archive again is refused nowhere and changes nothing
    again = salt_call(new, "chatmail_migrate.import", ARCHIVE)
    assert again["accounts"] == {"new": 0, "existing": 2}
    assert again["dkim"]["replaced"] == [] and again["mail"]["replaced"] == []

    converged = hosts.converge(new)
    assert converged.ok, converged.summary()

    # --- clients of the old relay on the new one, unchanged
    assert (
        new.exec("stat", "-c", "%Y %U:%G %a", f"{MAILBOXES}/{DOMAIN}/{bob}/password").stdout
        == bob_password_file.stdout
    )
    after = fetch_inbox(new.ip, bob, bob_pw, 1)
    assert {uid: m["Message-ID"] for uid, m in after.items()} == {
        uid: m["Message-ID"] for uid, m in before.items()
    }
    (moved,) = after.values()
    assert moved.get_content_type() == "multipart/encrypted"
    assert pending_for(new, bob)
    imap = imap_login(new.ip, bob, bob_pw)
    try:
        imap.select("Archive")
        _typ, data = imap.search(None, "SUBJECT", "kept")
        assert len(data[0].split()) == 1
    finally:
        imap.logout()
    imap_login(new.ip, alice, alice_pw).logout()
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(new.ip, alice, alice_pw + "x")
    imap = imap_login(new.ip, bob, bob_pw)
    try:
        assert "tok-moving-device" in metadata(imap, "GETMETADATA", f"INBOX {TOKEN_ENTRY}")
    finally:
        imap.logout()

    # --- the same DKIM key: module, zone fragment, key file, signatures
    assert salt_call(new, "chatmail_dkim.public_key", DOMAIN) == old_public
    assert zone_dkim(new) == f"v=DKIM1;k=rsa;p={old_public}"
    assert new.exec("cat", f"/etc/dkimkeys/{DOMAIN}.opendkim.private").stdout == old_key
    assert new.exec(
        "stat", "-c", "%U %a", f"/etc/dkimkeys/{DOMAIN}.opendkim.private"
    ).stdout.split() == ["opendkim", "600"]
    new_id = send(new.ip, alice, alice_pw, bob)
    assert f"<{new_id}>" in [m["Message-ID"] for m in fetch_inbox(new.ip, bob, bob_pw, 2).values()]
    assert dkim_signed(new, new_id, DOMAIN)

    # --- the moved files have the modes and owners the daemons give them
    loose = new.sh(
        f"find {MAILBOXES}/{DOMAIN} /var/lib/chatmaild -perm /7077"
        " ! -name 'dovecot-uidvalidity.*' -print"
    ).stdout.split()
    assert loose == []
    assert new.exec(
        "stat", "-c", "%U:%G %a", f"{MAILBOXES}/{DOMAIN}/{bob}", f"{MAILBOXES}/{DOMAIN}/{bob}/cur"
    ).stdout.split() == ["vmail:dovecot", "700", "vmail:vmail", "700"]

    hostile_archives(new)

    final = hosts.converge(new)
    assert final.ok, final.summary()
    assert final.changed == []


def tar_gz(members):
    """A tar.gz of (name, kind, payload, mode) members (kind: file, dir, sym),
    manifest first."""
    buf = io.BytesIO()
    manifest = json.dumps({"format": 1, "domains": {DOMAIN: {}}}).encode()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, kind, payload, mode in [("manifest.json", "file", manifest, 0o600), *members]:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime = mode, int(time.time())
            data = None
            if kind == "file":
                data = payload if isinstance(payload, bytes) else payload.encode()
                info.size = len(data)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            else:
                info.type, info.linkname = tarfile.SYMTYPE, payload
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def put(host, path, data):
    """Copy bytes to a root-only file on the host."""
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        local.write_bytes(data)
        docker_cli("cp", str(local), f"{host.name}:{path}")
    host.exec("chmod", "0600", path)


def hostile_archives(host):
    """Crafted archives against the real relay: chained relative links that
    each look harmless but together make acme/etc the host's /etc are refused
    by inspect and import, nothing written; an archive full of 0777/0666 and
    set-id bits is installed with the relay's own modes, and the account in it
    logs in (doveauth and Dovecot read what the import wrote)."""
    chain = [
        ("acme/l1", "sym", ".", 0o777),
        ("acme/l2", "sym", "l1/..", 0o777),
        ("acme/l3", "sym", "l2/..", 0o777),
        ("acme/l4", "sym", "l3/..", 0o777),
        ("acme/etc", "sym", "l4/etc", 0o777),
    ]
    put(host, "/root/chain.tar.gz", tar_gz(chain))
    for function in ("chatmail_migrate.inspect", "chatmail_migrate.import"):
        proc = hosts.salt_call(host, function, "/root/chain.tar.gz")
        assert proc.returncode != 0
        assert "not a link acmetool writes" in proc.stdout + proc.stderr
    assert host.exec("test", "-e", "/var/lib/acme/l1", check=False).returncode != 0
    assert host.exec("test", "-e", "/var/lib/acme/etc", check=False).returncode != 0

    addr, password = new_credentials(DOMAIN)
    user = f"mail/{DOMAIN}/{addr}"
    loose = [
        (user, "dir", None, 0o1777),
        (f"{user}/password", "file", encrypt_password(password) + "\n", 0o6666),
        (f"{user}/enforceE2EEincoming", "file", "", 0o777),
        (f"{user}/cur", "dir", None, 0o2777),
        (f"{user}/cur/1700000000.M1P1.x:2,S", "file", "Subject: hi\r\n\r\nhi\r\n", 0o4777),
        (f"{user}/new", "dir", None, 0o777),
        (f"{user}/tmp", "dir", None, 0o777),
    ]
    put(host, "/root/loose.tar.gz", tar_gz([(f"mail/{DOMAIN}", "dir", None, 0o777), *loose]))
    salt_call(host, "chatmail_migrate.import", "/root/loose.tar.gz")
    base = f"{MAILBOXES}/{DOMAIN}"
    modes = host.exec(
        "stat",
        "-c",
        "%n %U:%G %a",
        base,
        f"{base}/{addr}",
        f"{base}/{addr}/password",
        f"{base}/{addr}/enforceE2EEincoming",
        f"{base}/{addr}/cur",
        f"{base}/{addr}/cur/1700000000.M1P1.x:2,S",
    ).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in modes] == [
        "vmail:vmail 700",
        "vmail:dovecot 700",
        "vmail:dovecot 600",
        "vmail:dovecot 600",
        "vmail:vmail 700",
        "vmail:vmail 600",
    ]
    imap = imap_login(host.ip, addr, password)
    try:
        imap.select("INBOX")
        _typ, data = imap.search(None, "ALL")
        assert len(data[0].split()) == 1
    finally:
        imap.logout()
