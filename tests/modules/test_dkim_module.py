"""chatmail_dkim execution module, loaded by the salt loader from salt://_modules."""

import base64
import os
import stat

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from salt.exceptions import CommandExecutionError, SaltInvocationError

DOMAIN = "keys.test"


def test_generate_creates_pem_key_mode_0600(modules, tmp_path):
    ret = modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path))
    path = tmp_path / f"{DOMAIN}.opendkim.private"
    assert ret["path"] == str(path)
    assert ret["created"] is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pem = path.read_bytes()
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    key = serialization.load_pem_private_key(pem, password=None)
    assert key.key_size == 2048
    der = base64.b64decode(ret["public"])
    assert serialization.load_der_public_key(der).public_numbers() == (
        key.public_key().public_numbers()
    )
    # no temporary files left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_generate_never_overwrites(modules, tmp_path):
    first = modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path))
    before = (tmp_path / f"{DOMAIN}.opendkim.private").read_bytes()
    second = modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path), bits=4096)
    assert second == dict(first, created=False)
    assert (tmp_path / f"{DOMAIN}.opendkim.private").read_bytes() == before


def test_generate_keeps_foreign_file(modules, tmp_path):
    path = tmp_path / f"{DOMAIN}.opendkim.private"
    path.write_bytes(b"not a key, but not ours to replace either\n")
    with pytest.raises(CommandExecutionError, match="cannot read the DKIM key"):
        modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path))
    assert path.read_bytes() == b"not a key, but not ours to replace either\n"


def test_generate_creates_keydir_and_owner(modules, tmp_path):
    keydir = tmp_path / "dkimkeys"
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    ret = modules.chatmail_dkim.generate(DOMAIN, keydir=str(keydir), user="nobody", group="nogroup")
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    st = os.stat(ret["path"])
    import grp
    import pwd

    assert st.st_uid == pwd.getpwnam("nobody").pw_uid
    assert st.st_gid == grp.getgrnam("nogroup").gr_gid


def test_generate_missing_user_is_skipped(modules, tmp_path):
    ret = modules.chatmail_dkim.generate(
        DOMAIN, keydir=str(tmp_path), user="no-such-user-cm", group="no-such-group-cm"
    )
    assert ret["created"] is True
    assert os.stat(ret["path"]).st_uid == os.geteuid()


def test_public_key_and_txt(modules, tmp_path):
    keydir = str(tmp_path)
    assert modules.chatmail_dkim.public_key(DOMAIN, keydir=keydir) is None
    assert modules.chatmail_dkim.txt_value(DOMAIN, keydir=keydir) is None
    assert modules.chatmail_dkim.txt_strings(DOMAIN, keydir=keydir) is None
    ret = modules.chatmail_dkim.generate(DOMAIN, selector="s2026", keydir=keydir)
    public = modules.chatmail_dkim.public_key(DOMAIN, selector="s2026", keydir=keydir)
    assert public == ret["public"]
    value = modules.chatmail_dkim.txt_value(DOMAIN, selector="s2026", keydir=keydir)
    assert value == f"v=DKIM1;k=rsa;p={public}"
    strings = modules.chatmail_dkim.txt_strings(DOMAIN, selector="s2026", keydir=keydir)
    assert len(strings) == 2
    assert all(len(s) <= 255 for s in strings)
    assert "".join(strings) == value
    assert modules.chatmail_dkim.selectors(DOMAIN, keydir=keydir) == ["s2026"]
    assert modules.chatmail_dkim.selectors("other.test", keydir=keydir) == []


def test_split_txt(modules):
    assert modules.chatmail_dkim.split_txt("") == [""]
    assert modules.chatmail_dkim.split_txt("a" * 255) == ["a" * 255]
    assert modules.chatmail_dkim.split_txt("a" * 256) == ["a" * 255, "a"]


def test_key_signs_and_verifies_with_dkimpy(modules, tmp_path):
    """The key and the published TXT value work for real DKIM (dkimpy)."""
    keydir = str(tmp_path)
    ret = modules.chatmail_dkim.generate(DOMAIN, keydir=keydir)
    txt = modules.chatmail_dkim.txt_value(DOMAIN, keydir=keydir)
    message = (
        b"From: alice@keys.test\r\nTo: bob@example.org\r\nSubject: [...]\r\n"
        b"Date: Sun, 22 Nov 2026 04:00:00 +0000\r\nMessage-ID: <1@keys.test>\r\n\r\nhello\r\n"
    )
    with open(ret["path"], "rb") as fh:
        private = fh.read()
    signature = dkim.sign(message, b"opendkim", DOMAIN.encode(), private)

    def dnsfunc(name, timeout=5):
        assert name == b"opendkim._domainkey.keys.test."
        return txt.encode()

    assert dkim.verify(signature + message, dnsfunc=dnsfunc)


@pytest.mark.parametrize(
    "domain,selector",
    [("../etc", "opendkim"), ("a/b.test", "opendkim"), ("ok.test", "../x"), ("", "opendkim")],
)
def test_unsafe_names_are_refused(modules, tmp_path, domain, selector):
    with pytest.raises(SaltInvocationError):
        modules.chatmail_dkim.key_path(domain, selector=selector, keydir=str(tmp_path))


def test_relative_keydir_refused(modules):
    with pytest.raises(SaltInvocationError, match="absolute"):
        modules.chatmail_dkim.generate(DOMAIN, keydir="relative/dir")


def test_small_keys_refused(modules, tmp_path):
    with pytest.raises(SaltInvocationError):
        modules.chatmail_dkim.generate(DOMAIN, keydir=str(tmp_path), bits=512)
    assert list(tmp_path.iterdir()) == []


def test_list_keys_public_only(modules, tmp_path):
    keydir = str(tmp_path)
    assert modules.chatmail_dkim.list_keys(keydir=keydir) == {}
    a = modules.chatmail_dkim.generate("a.test", keydir=keydir)["public"]
    b1 = modules.chatmail_dkim.generate("b.sub.test", keydir=keydir)["public"]
    b2 = modules.chatmail_dkim.generate("b.sub.test", selector="s2", keydir=keydir)["public"]
    (tmp_path / "README.PrivateKeys").write_text("Debian's note\n")
    (tmp_path / "broken.test.opendkim.private").write_text("garbage\n")
    assert modules.chatmail_dkim.list_keys(keydir=keydir) == {
        "a.test": {"opendkim": a},
        "b.sub.test": {"opendkim": b1, "s2": b2},
    }
    assert modules.chatmail_dkim.list_keys(keydir=str(tmp_path / "none")) == {}
