"""chatmail_dkim / chatmail_dns state modules through state.single (salt loader):
test mode predicts, real mode changes, a second run changes nothing."""

import os
import stat

import pytest

from .conftest import zone_text

DOMAIN = "state.test"
IPV4 = "192.0.2.30"


# ---------------------------------------------------------------------------
# chatmail_dkim.key_present


def test_key_present_test_mode_then_real_then_idempotent(states, tmp_path):
    path = tmp_path / f"{DOMAIN}.opendkim.private"
    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path), test=True)
    assert ret.result is None
    assert ret.changes == {"created": str(path)}
    assert not path.exists()

    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path))
    assert ret.result is True
    assert ret.changes == {"created": str(path)}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_bytes()

    for test in (True, False):
        ret = states.chatmail_dkim.key_present(
            name=DOMAIN, keydir=str(tmp_path), bits=4096, test=test
        )
        assert ret.result is True
        assert ret.changes == {}
    assert path.read_bytes() == key


def test_key_present_fixes_mode(states, tmp_path):
    states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path))
    path = tmp_path / f"{DOMAIN}.opendkim.private"
    key = path.read_bytes()
    os.chmod(path, 0o644)
    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path), test=True)
    assert ret.result is None
    assert ret.changes == {"mode": "0600"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path))
    assert ret.result is True
    assert ret.changes == {"mode": "0600"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes() == key
    assert states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path)).changes == {}


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_key_present_fixes_owner(states, tmp_path):
    ret = states.chatmail_dkim.key_present(
        name=DOMAIN, keydir=str(tmp_path), user="nobody", group="nogroup"
    )
    path = tmp_path / f"{DOMAIN}.opendkim.private"
    os.chown(path, 0, 0)
    ret = states.chatmail_dkim.key_present(
        name=DOMAIN, keydir=str(tmp_path), user="nobody", group="nogroup", test=True
    )
    assert ret.result is None
    assert ret.changes == {"user": "nobody", "group": "nogroup"}
    ret = states.chatmail_dkim.key_present(
        name=DOMAIN, keydir=str(tmp_path), user="nobody", group="nogroup"
    )
    assert ret.result is True
    assert ret.changes == {"user": "nobody", "group": "nogroup"}
    assert path.stat().st_uid != 0


def test_key_present_rotation_needs_rotate_and_keeps_old_key(states, modules, tmp_path):
    keydir = str(tmp_path)
    states.chatmail_dkim.key_present(name=DOMAIN, keydir=keydir)
    old = (tmp_path / f"{DOMAIN}.opendkim.private").read_bytes()

    ret = states.chatmail_dkim.key_present(name=DOMAIN, selector="dkim2026", keydir=keydir)
    assert ret.result is False
    assert "rotate" in ret.comment and "opendkim" in ret.comment
    assert not (tmp_path / f"{DOMAIN}.dkim2026.private").exists()

    ret = states.chatmail_dkim.key_present(
        name=DOMAIN, selector="dkim2026", keydir=keydir, rotate=True, test=True
    )
    assert ret.result is None
    assert not (tmp_path / f"{DOMAIN}.dkim2026.private").exists()

    ret = states.chatmail_dkim.key_present(
        name=DOMAIN, selector="dkim2026", keydir=keydir, rotate=True
    )
    assert ret.result is True
    assert ret.changes == {
        "created": str(tmp_path / f"{DOMAIN}.dkim2026.private"),
        "kept": ["opendkim"],
    }
    assert (tmp_path / f"{DOMAIN}.opendkim.private").read_bytes() == old
    assert modules.chatmail_dkim.selectors(DOMAIN, keydir=keydir) == ["dkim2026", "opendkim"]
    # rotate on an existing selector never regenerates
    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=keydir, rotate=True)
    assert ret.result is True and ret.changes == {}
    assert (tmp_path / f"{DOMAIN}.opendkim.private").read_bytes() == old


def test_key_present_refuses_symlink(states, tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("x")
    (tmp_path / f"{DOMAIN}.opendkim.private").symlink_to(target)
    ret = states.chatmail_dkim.key_present(name=DOMAIN, keydir=str(tmp_path))
    assert ret.result is False
    assert "not a regular file" in ret.comment
    assert target.read_text() == "x"


def test_key_present_bad_name(states, tmp_path):
    ret = states.chatmail_dkim.key_present(name="../etc", keydir=str(tmp_path))
    assert ret.result is False
    assert "invalid DKIM domain" in ret.comment


# ---------------------------------------------------------------------------
# chatmail_dns.zone_fragment_managed


def test_zone_fragment_managed(states, modules, tmp_path):
    keydir = tmp_path / "keys"
    modules.chatmail_dkim.generate(DOMAIN, keydir=str(keydir))
    path = tmp_path / "zones" / f"{DOMAIN}.zone"
    args = {"domain": DOMAIN, "ipv4": IPV4, "ipv6": False, "keydir": str(keydir)}

    ret = states.chatmail_dns.zone_fragment_managed(name=str(path), test=True, **args)
    assert ret.result is None
    assert ret.changes == {"new": f"zone fragment of {DOMAIN}"}
    assert not path.exists()

    ret = states.chatmail_dns.zone_fragment_managed(name=str(path), **args)
    assert ret.result is True
    assert ret.changes == {"new": f"zone fragment of {DOMAIN}"}
    expected = modules.chatmail_dns.zone_fragment(DOMAIN, ipv4=IPV4, ipv6=False, keydir=str(keydir))
    assert path.read_text() == expected
    assert stat.S_IMODE(path.stat().st_mode) == 0o644

    for test in (True, False):
        ret = states.chatmail_dns.zone_fragment_managed(name=str(path), test=test, **args)
        assert ret.result is True
        assert ret.changes == {}

    # a new address changes exactly the A line
    args["ipv4"] = "192.0.2.31"
    ret = states.chatmail_dns.zone_fragment_managed(name=str(path), test=True, **args)
    assert ret.result is None
    diff = ret.changes["diff"]
    assert f"-{DOMAIN}." in diff and IPV4 in diff and "+" in diff
    assert path.read_text() == expected
    ret = states.chatmail_dns.zone_fragment_managed(name=str(path), **args)
    assert ret.result is True and "diff" in ret.changes
    assert "192.0.2.31" in path.read_text()
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]

    os.chmod(path, 0o600)
    ret = states.chatmail_dns.zone_fragment_managed(name=str(path), **args)
    assert ret.changes == {"mode": "0644"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


# ---------------------------------------------------------------------------
# chatmail_dns.records_checked


@pytest.fixture(scope="module")
def served(loaders, nsd_factory, tmp_path_factory):
    mods = loaders.modules
    keydir = str(tmp_path_factory.mktemp("state-dkim"))
    args = {"ipv4": IPV4, "ipv6": False, "keydir": keydir}
    zones = {}
    for domain in ("good.test", "nomx.test"):
        mods.chatmail_dkim.generate(domain, keydir=keydir, bits=1024)
        text = mods.chatmail_dns.zone_fragment(domain, **args)
        if domain == "nomx.test":
            text = "".join(line for line in text.splitlines(True) if " MX " not in line)
        zones[domain] = zone_text(domain, text)
    server = nsd_factory(zones)
    return {"nameservers": [server.address], **args}


@pytest.mark.parametrize("on_failure", ["warn", "fail"])
@pytest.mark.parametrize("test", [False, True])
def test_records_checked_good(states, served, on_failure, test):
    ret = states.chatmail_dns.records_checked(
        name="good.test", on_failure=on_failure, test=test, **served
    )
    assert ret.result is True
    assert ret.changes == {}
    assert "all required records are present" in ret.comment


@pytest.mark.parametrize("test", [False, True])
def test_records_checked_missing_mx(states, served, test):
    ret = states.chatmail_dns.records_checked(
        name="nomx.test", on_failure="fail", test=test, **served
    )
    assert ret.result is False
    assert ret.changes == {}
    assert "MX nomx.test.: missing" in ret.comment

    ret = states.chatmail_dns.records_checked(
        name="nomx.test", on_failure="warn", test=test, **served
    )
    assert ret.result is True
    assert ret.changes == {}
    assert "MX nomx.test.: missing" in ret.comment


def test_records_checked_off_and_ip(states):
    ret = states.chatmail_dns.records_checked(name="nowhere.test", on_failure="off")
    assert ret.result is True and ret.changes == {} and "off" in ret.comment
    ret = states.chatmail_dns.records_checked(name="192.0.2.1", on_failure="fail")
    assert ret.result is True and "skipped" in ret.comment
    ret = states.chatmail_dns.records_checked(name="good.test", on_failure="sometimes")
    assert ret.result is False


def test_records_checked_unreachable(states, served):
    args = dict(served, nameservers=["127.0.0.1:9"], timeout=0.3)
    ret = states.chatmail_dns.records_checked(name="good.test", on_failure="warn", **args)
    assert ret.result is True and "could not run" in ret.comment
    ret = states.chatmail_dns.records_checked(name="good.test", on_failure="fail", **args)
    assert ret.result is False and "could not run" in ret.comment


# ---------------------------------------------------------------------------
# the way the state tree uses them: one SLS, rendered with Jinja


def test_sls_renders_policy_and_zone(modules, tmp_path):
    keydir = tmp_path / "keys"
    www = tmp_path / "www"
    sls = f"""
chatmail-dkim-{DOMAIN}-key-present:
  chatmail_dkim.key_present:
    - name: {DOMAIN}
    - keydir: {keydir}

chatmail-web-{DOMAIN}-mta-sts-file-managed:
  file.managed:
    - name: {www}/.well-known/mta-sts.txt
    - makedirs: true
    - contents: {{{{ salt['chatmail_dns.mta_sts_policy']('{DOMAIN}') | json }}}}

chatmail-dns-{DOMAIN}-zone-fragment-managed:
  chatmail_dns.zone_fragment_managed:
    - name: {tmp_path}/zones/{DOMAIN}.zone
    - domain: {DOMAIN}
    - ipv4: {IPV4}
    - ipv6: false
    - keydir: {keydir}
    - require:
      - chatmail_dkim: chatmail-dkim-{DOMAIN}-key-present
"""
    ret = modules.state.template_str(sls)
    assert all(r.result is True for r in ret), ret
    assert all(r.changes for r in ret), ret
    policy = (www / ".well-known" / "mta-sts.txt").read_bytes()
    assert policy == modules.chatmail_dns.mta_sts_policy(DOMAIN).encode()
    zone = (tmp_path / "zones" / f"{DOMAIN}.zone").read_text()
    assert "_domainkey" in zone
    assert modules.chatmail_dns.mta_sts_id(DOMAIN) in zone
    ret = modules.state.template_str(sls)
    assert all(r.result is True and not r.changes for r in ret), ret


# ---------------------------------------------------------------------------
# chatmail_files.pruned


def _tree(base):
    (base / "keep.test.zone").write_text("kept")
    (base / "gone.test.zone").write_text("stale")
    (base / "notes.txt").write_text("not matched")
    (base / "gone.test").mkdir()
    (base / "gone.test" / "fullchain.pem").write_text("x")
    outside = base.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "precious").write_text("must stay")
    (base / "link.test.zone").symlink_to(outside)
    return outside


def test_pruned_test_mode_then_real_then_idempotent(states, tmp_path):
    base = tmp_path / "zones"
    base.mkdir()
    outside = _tree(base)
    kw = {"name": str(base), "match": "*.zone", "keep": ["keep.test.zone"]}
    ret = states.chatmail_files.pruned(**kw, test=True)
    assert ret.result is None
    assert ret.changes == {"removed": ["gone.test.zone", "link.test.zone"]}
    assert (base / "gone.test.zone").exists()

    ret = states.chatmail_files.pruned(**kw)
    assert ret.result is True
    assert ret.changes == {"removed": ["gone.test.zone", "link.test.zone"]}
    assert sorted(p.name for p in base.iterdir()) == ["gone.test", "keep.test.zone", "notes.txt"]
    # a symlink is removed itself, never followed
    assert (outside / "precious").read_text() == "must stay"
    for test in (True, False):
        ret = states.chatmail_files.pruned(**kw, test=test)
        assert ret.result is True and ret.changes == {}


def test_pruned_kinds_and_marker(states, tmp_path):
    base = tmp_path / "desired"
    base.mkdir()
    outside = _tree(base)
    (base / "ours.test").write_text("# Managed by Salt (chatmail-salt)\nnames: [ours.test]\n")
    (base / "theirs.test").write_text("names: [theirs.test]\n")
    ret = states.chatmail_files.pruned(name=str(base), kind="dir", keep=["keep.test"])
    assert ret.changes == {"removed": ["gone.test"]}  # neither files nor the symlinked dir
    ret = states.chatmail_files.pruned(
        name=str(base), kind="file", containing=r"Managed by Salt \(chatmail-salt\)"
    )
    assert ret.changes == {"removed": ["ours.test"]}
    assert (base / "theirs.test").exists() and (outside / "precious").exists()


def test_pruned_missing_directory_and_bad_kind(states, tmp_path):
    ret = states.chatmail_files.pruned(name=str(tmp_path / "absent"))
    assert ret.result is True and ret.changes == {}
    ret = states.chatmail_files.pruned(name=str(tmp_path), kind="socket")
    assert ret.result is False and "kind must be one of" in ret.comment


# ---------------------------------------------------------------------------
# chatmail_venv.installed


def _package(src, version):
    (src / "src" / "tinypkg").mkdir(parents=True, exist_ok=True)
    (src / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        f'[project]\nname = "tinypkg"\nversion = "{version}"\n'
    )
    (src / "src" / "tinypkg" / "__init__.py").write_text(f"VERSION = {version!r}\n")


def test_venv_installed_follows_the_source(states, tmp_path):
    import subprocess

    src, venv = tmp_path / "src", tmp_path / "venv"
    _package(src, "1.0")
    # Debian's python3 with python3-setuptools/-wheel, as on a relay (./cmsalt installs them)
    kw = {"name": str(venv), "source": str(src)}
    ret = states.chatmail_venv.installed(**kw, test=True)
    assert ret.result is None and set(ret.changes) == {"installed", "venv"}
    assert not venv.exists()

    ret = states.chatmail_venv.installed(**kw)
    assert ret.result is True, ret.comment
    assert set(ret.changes) == {"installed", "venv"}

    def version():
        code = "import tinypkg; print(tinypkg.VERSION)"
        return subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert version() == "1.0"
    for test in (True, False):
        ret = states.chatmail_venv.installed(**kw, test=test)
        assert ret.result is True and ret.changes == {}
    # byte code next to the source is no change; an edited file is
    (src / "src" / "tinypkg" / "__pycache__").mkdir()
    (src / "src" / "tinypkg" / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert states.chatmail_venv.installed(**kw).changes == {}
    _package(src, "2.0")
    ret = states.chatmail_venv.installed(**kw, test=True)
    assert ret.result is None and set(ret.changes) == {"installed"}
    ret = states.chatmail_venv.installed(**kw)
    assert ret.result is True and set(ret.changes) == {"installed"}
    assert version() == "2.0"
    # the source tree stays as it was (no build/ or egg-info left in it)
    assert sorted(p.name for p in src.iterdir()) == ["pyproject.toml", "src"]


def test_venv_installed_reports_a_failed_build(states, tmp_path):
    src = tmp_path / "src"
    _package(src, "1.0")
    (src / "pyproject.toml").write_text("this is not toml [")
    ret = states.chatmail_venv.installed(name=str(tmp_path / "v"), source=str(src))
    assert ret.result is False and "pip install" in ret.comment
    assert not (tmp_path / "v" / ".installed-src.sha256").exists()
    ret = states.chatmail_venv.installed(name=str(tmp_path / "w"), source=str(tmp_path / "none"))
    assert ret.result is False and "pyproject.toml missing" in ret.comment


# ---------------------------------------------------------------------------
# chatmail_venv.requirements


def test_venv_requirements_from_a_wheelhouse(states, tmp_path):
    import subprocess
    import sys

    wheels = tmp_path / "wheels"
    for version in ("1.0", "2.0"):
        _package(tmp_path / f"src-{version}", version)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
            + ["-w", str(wheels), str(tmp_path / f"src-{version}")],
            check=True,
        )
    venv = tmp_path / "venv"
    kw = {"name": str(venv), "pip_args": f"--no-index --find-links={wheels}"}

    def version():
        code = "import tinypkg; print(tinypkg.VERSION)"
        return subprocess.run(
            [str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True
        ).stdout.strip()

    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==1.0"], test=True)
    assert ret.result is None and ret.changes == {"installed": ["tinypkg==1.0"]}
    assert not venv.exists()
    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==1.0"])
    assert ret.result is True, ret.comment
    assert version() == "1.0"
    for test in (True, False):
        ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==1.0"], test=test)
        assert ret.result is True and ret.changes == {}
    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==2.0"])
    assert ret.changes == {"installed": ["tinypkg==2.0"], "replaced": ["tinypkg==1.0"]}
    assert version() == "2.0"
    # not in the wheelhouse: fails, and the next run tries again
    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==3.0"])
    assert ret.result is False and "pip install" in ret.comment
    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg==3.0"], test=True)
    assert ret.result is None
    ret = states.chatmail_venv.requirements(**kw, pkgs=["tinypkg"])
    assert ret.result is False and "pinned" in ret.comment
