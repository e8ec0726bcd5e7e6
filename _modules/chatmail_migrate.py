"""
Move a chatmail relay to a new host: export its data on the old host, import
it on the new one.

What travels, per chatmail domain, in one ``tar.gz`` archive (mode 0600):

- ``dkim/<domain>.<selector>.private``: every DKIM key of the domain (the one
  in use and any kept after a rotation), so the published DNS record stays valid;
- ``mail/<domain>/<addr>/...``: the account directories as they are on disk
  (``password`` with its mtime, the last-login day; ``enforceE2EEincoming``;
  ``metadata.json`` with push tokens; the Maildir with its subfolders and the
  Dovecot index files, so UIDs stay and clients resynchronise nothing);
- ``state/pending_notifications/...``: queued push notifications of those
  addresses;
- ``acme/...``: in acme mode the domain's current certificate, its key and the
  acmetool account, so the new host does not ask Let's Encrypt again.

Certificates of modes ``self`` and ``ca`` are issued anew by the new host's
highstate; ``external`` certificates are the operator's files (the manifest
names them).  The archive starts with ``manifest.json`` (domains, selectors,
counts, source host, chatmail-salt version).

The import treats the archive as untrusted input: absolute names, ``..``,
device files and names of domains the manifest does not list are refused
before anything is written, and so is every link except the two forms
acmetool itself writes in ``acme/`` (``live/<name> -> ../certs/<id>``,
``certs/<id>/privkey -> ../../keys/<id>/privkey``).  Modes and owners come
from the relay's own rules (what doveauth, Dovecot, opendkim and acmetool
create: 0700 directories and 0600 files of vmail, 0600 keys of opendkim,
...), never from the archive.  Nothing below a data directory is resolved by
name: files are created in a private staging directory inside it through
directory descriptors opened with ``O_NOFOLLOW`` and renamed into place the
same way, so a link that a service account puts into the directories it owns
is never written through; a data directory must belong to its service account.
A bad archive or a full disk leaves the host as it was.

:depends: cryptography (DKIM keys are checked before they are installed)
"""

import datetime
import errno
import grp
import hashlib
import io
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from cryptography.hazmat.primitives import serialization

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the minion's python
    HAS_CRYPTOGRAPHY = False

log = logging.getLogger(__name__)

__virtualname__ = "chatmail_migrate"
__func_alias__ = {"import_": "import"}

FORMAT = 1
MANIFEST = "manifest.json"
MANIFEST_MAX = 1 << 20
SECTIONS = ("dkim", "mail", "state", "acme")
QUEUE_DIRNAME = "pending_notifications"
# What stops taking mail during the export (see export()).
INTAKE_UNITS = ("postfix", "dovecot", "chatmail-metadata")

# Settings that are not in the merged map's lookup (the paths ini and
# dkim_dir, the vmail user and acmetool's state directory come from there, see
# _settings); mailboxes_dir and state_dir are read from chatmail.ini first.
DEFAULTS = {
    "keytable": "/etc/opendkim/KeyTable",
    "mailboxes_dir": "/home/vmail/mail",
    "state_dir": "/var/lib/chatmaild",
    "dkim_user": "opendkim",
    "acme_user": "root",
}
# What a caller may override (keyword arguments of export, import and inspect).
# acme_state_dir is acmetool's whole state directory (/var/lib/acme), the
# parent of lookup:paths:acme_dir (its live/ directory).
SETTINGS = ("ini", "dkim_dir", "vmail_user", "acme_state_dir", *DEFAULTS)
_LOCALPART = re.compile(r"^[^\x00-\x20/@\x7f]+$")


# acmetool's state directory (hlandau/acmetool, storage and fdb): the only
# links it writes are live/<hostname> -> ../certs/<cert id> and
# certs/<cert id>/privkey -> ../../keys/<key id>/privkey; ids are lower-case
# base32 SHA-256 digests.  Nothing else of its state moves, and no other link
# form is accepted: checking a link's target lexically is not enough, since
# links resolve through other links (l1 -> ., l2 -> l1/.. is acme's parent).
_ACME_ID = r"[a-z0-9]{1,128}"
_ACME_ID_RE = re.compile(rf"^{_ACME_ID}$")
_ACME_LIVE_LINK = re.compile(rf"^\.\./certs/{_ACME_ID}$")
_ACME_KEY_LINK = re.compile(rf"^\.\./\.\./keys/{_ACME_ID}/privkey$")
_ACME_CERT_FILES = ("cert", "chain", "fullchain", "url", "revoke", "revoked")
# accounts/<directory URL, query-escaped>/<account id>/privkey (+ authorizations/)
_ACME_ACCOUNT_PART = re.compile(r"^[A-Za-z0-9._%+:-]{1,255}$")
_ACME_ACCOUNT_DEPTH = 6


def _acme_hostnames(domains):
    """The names whose live/ links may move: each named domain's certificate
    names (the domain, mta-sts. and www.)."""
    names = set()
    for domain in domains:
        if not __utils__["chatmail_util.is_ip"](domain):
            names.update((domain, f"mta-sts.{domain}", f"www.{domain}"))
    return names


def _acme_problem(rel, kind, linkname, hostnames):
    """Why acme/<rel> (kind dir, file or link) is not something acmetool
    writes for a certificate of these hostnames; None when it is."""
    top, depth = rel[0], len(rel)
    want = None
    if top == "live":
        if depth == 1:
            want = "dir"
        elif depth == 2 and rel[1] in hostnames:
            want = "live-link"
    elif top in ("certs", "keys") and (depth == 1 or _ACME_ID_RE.match(rel[1])):
        if depth <= 2:
            want = "dir"
        elif depth == 3 and top == "keys" and rel[2] == "privkey":
            want = "file"
        elif depth == 3 and top == "certs" and rel[2] in _ACME_CERT_FILES:
            want = "file"
        elif depth == 3 and top == "certs" and rel[2] == "privkey":
            want = "key-link"
    elif top == "accounts" and depth <= _ACME_ACCOUNT_DEPTH:
        if all(_ACME_ACCOUNT_PART.match(part) for part in rel[1:]):
            want = "tree"
    if want is None:
        if kind == "link":
            return f"not a link acmetool writes (-> {linkname!r})"
        return "not part of acmetool's certificates, keys or accounts"
    if want.endswith("-link"):
        pattern = _ACME_LIVE_LINK if want == "live-link" else _ACME_KEY_LINK
        if kind != "link" or not pattern.match(linkname or ""):
            return (
                f"not a link acmetool writes (-> {linkname!r})"
                if kind == "link"
                else (f"must be a link as acmetool writes it, not a {kind}")
            )
        return None
    if kind == "link":
        return f"not a link acmetool writes (-> {linkname!r})"
    if want != "tree" and kind != want:
        return f"must be a {want}, not a {kind}"
    return None


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "chatmail_migrate: the python 'cryptography' library is not installed")
    return __virtualname__


# ---------------------------------------------------------------- settings


def _valid_domain(domain):
    """The canonical domain (the rule of _utils/chatmail_util.py)."""
    return __utils__["chatmail_util.domain_arg"](domain, "chatmail domain")


def _valid_selector(selector):
    try:
        __utils__["chatmail_util.check_selector"](selector)
    except ValueError:
        return False
    return True


def _read_ini(path):
    """chatmail.ini as _utils/chatmail_util.py reads it, or None when absent."""
    try:
        return __utils__["chatmail_util.read_ini"](path)
    except ValueError as exc:
        raise CommandExecutionError(str(exc)) from None


def _settings(overrides):
    """Paths and accounts: keyword overrides, else the host's chatmail.ini and
    ``lookup`` of the merged map (chatmail_config.lookup), else DEFAULTS."""
    # salt adds __pub_* keyword arguments when called from the command line
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    unknown = set(overrides) - set(SETTINGS)
    if unknown:
        raise SaltInvocationError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    lookup = __utils__["chatmail_util.lookup"](__salt__)
    s = dict(DEFAULTS)
    s["ini"] = overrides.get("ini") or lookup["paths"]["ini"]
    s["dkim_dir"] = lookup["paths"]["dkim_dir"]
    s["vmail_user"] = lookup["users"]["vmail"]
    s["acme_state_dir"] = os.path.dirname(lookup["paths"]["acme_dir"].rstrip("/"))
    ini = _read_ini(s["ini"])
    s["domains"], s["tls_modes"] = [], {}
    if ini:
        s["domains"], s["tls_modes"] = ini["domains"], ini["tls_modes"]
        if ini["mailboxes_dir"]:
            s["mailboxes_dir"] = ini["mailboxes_dir"]
        if ini["params"].get("state_dir"):
            s["state_dir"] = ini["params"]["state_dir"]
    s["has_ini"] = ini is not None
    s.update({k: v for k, v in overrides.items() if v})
    for key in ("dkim_dir", "keytable", "mailboxes_dir", "state_dir", "acme_state_dir"):
        if not os.path.isabs(str(s[key])):
            raise SaltInvocationError(f"{key} must be an absolute path: {s[key]!r}")
        s[key] = os.path.normpath(str(s[key]))
    return s


def _active_selectors(keytable):
    """{domain: selector} OpenDKIM signs with (from its KeyTable)."""
    found = {}
    try:
        with open(keytable, encoding="utf-8") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 2 and not parts[0].startswith("#"):
                    fields = parts[1].split(":")
                    if len(fields) >= 2:
                        found[fields[0].lower()] = fields[1]
    except OSError:
        pass
    return found


def _tree_version():
    """{"version", "commit"} of the chatmail-salt tree this minion uses, when known."""
    info = {"version": None, "commit": None}
    try:
        roots = __opts__.get("file_roots", {}).get("base", [])
    except NameError:
        roots = []
    for root in roots:
        repo = os.path.dirname(os.path.realpath(os.path.join(root, "chatmaild")))
        meta = os.path.join(repo, "chatmaild", "pyproject.toml")
        if os.path.isfile(meta) and not info["version"]:
            with open(meta, encoding="utf-8") as fh:
                match = re.search(r'(?m)^version\s*=\s*"([^"]+)"', fh.read())
            info["version"] = match.group(1) if match else None
        if not info["commit"]:
            info["commit"] = _git_head(os.path.join(repo, ".git"))
    return info


def _git_head(gitdir):
    try:
        with open(os.path.join(gitdir, "HEAD"), encoding="utf-8") as fh:
            head = fh.read().strip()
        if not head.startswith("ref: "):
            return head or None
        ref = head[5:]
        path = os.path.join(gitdir, ref)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        with open(os.path.join(gitdir, "packed-refs"), encoding="utf-8") as fh:
            for line in fh:
                if line.rstrip().endswith(" " + ref):
                    return line.split()[0]
    except OSError:
        pass
    return None


def _minion_id():
    try:
        return __opts__.get("id")
    except NameError:
        return None


# ---------------------------------------------------------------- services


def _systemctl(*args):
    """Run systemctl; (returncode, output).  Hosts without systemd: (None, reason)."""
    if not shutil.which("systemctl"):
        return None, "systemctl not found"
    proc = subprocess.run(
        ["systemctl", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, (proc.stdout + proc.stderr).strip()


def _active(unit):
    code, out = _systemctl("is-active", unit)
    return code == 0 and out.splitlines()[-1:] == ["active"]


def _stop_intake():
    stopped = []
    try:
        for unit in INTAKE_UNITS:
            if _active(unit):
                code, out = _systemctl("stop", unit)
                if code != 0:
                    raise CommandExecutionError(f"systemctl stop {unit} failed: {out}")
                stopped.append(unit)
    except BaseException:
        _start(stopped)
        raise
    return stopped


def _start(units):
    for unit in reversed(units):
        code, out = _systemctl("start", unit)
        if code not in (0, None):
            log.error("chatmail_migrate: could not start %s again: %s", unit, out)


# ---------------------------------------------------------------- export


def _account_name_ok(name, domain):
    local, at, dom = name.rpartition("@")
    if not at or dom.strip("[]").lower() != domain or not _LOCALPART.match(local):
        return False
    return not name.startswith(".")


def _walk(root):
    """(relative path, lstat) of root's entries, parents first; symlinks and
    special files are returned too (the caller decides)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames) + sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                st = os.lstat(full)
            except FileNotFoundError:
                continue
            out.append((os.path.relpath(full, root), st))
    return out


def _acme_entries(acme_dir, domain):
    """Files of acmetool's state that serve ``domain``: live/<domain> (a link to
    certs/<id>), that certificate directory, its key and the accounts."""
    live = os.path.join(acme_dir, "live", domain)
    if not os.path.islink(live):
        return []
    wanted = ["live", os.path.join("live", domain)]
    cert_rel = os.path.normpath(os.path.join("live", os.readlink(live)))
    cert_dir = os.path.join(acme_dir, cert_rel)
    if cert_rel.startswith("..") or not os.path.isdir(cert_dir):
        return wanted
    wanted += [os.path.dirname(cert_rel), cert_rel]
    wanted += [os.path.join(cert_rel, rel) for rel, _st in _walk(cert_dir)]
    privkey = os.path.join(cert_dir, "privkey")
    if os.path.islink(privkey):
        key_file = os.path.normpath(os.path.join(cert_rel, os.readlink(privkey)))
        key_dir = os.path.dirname(key_file)
        if not key_dir.startswith("..") and os.path.isdir(os.path.join(acme_dir, key_dir)):
            wanted += [os.path.dirname(key_dir), key_dir]
            wanted += [
                os.path.join(key_dir, rel) for rel, _st in _walk(os.path.join(acme_dir, key_dir))
            ]
    accounts = os.path.join(acme_dir, "accounts")
    if os.path.isdir(accounts):
        wanted.append("accounts")
        wanted += [os.path.join("accounts", rel) for rel, _st in _walk(accounts)]
    return wanted


def _collect(s, domains):
    """Everything to archive: [(arcname, source path)] and the manifest."""
    entries = []
    manifest_domains = {}
    skipped = []
    active = _active_selectors(s["keytable"])
    dkim_names = sorted(os.listdir(s["dkim_dir"])) if os.path.isdir(s["dkim_dir"]) else []
    acme = set()
    for domain in domains:
        info = {"accounts": 0, "files": 0, "bytes": 0, "dkim_selectors": []}
        _collect_dkim(s, domain, dkim_names, info, entries)
        info["active_selector"] = active.get(domain)
        base = os.path.join(s["mailboxes_dir"], domain)
        _collect_mail(base, domain, info, entries, skipped)
        mode = s["tls_modes"].get(domain, "")
        info["tls_mode"] = mode or None
        if mode == "external":
            info["note"] = "external TLS files are not in the archive: copy them yourself"
        found = _acme_entries(s["acme_state_dir"], domain)
        if found:
            info["tls_mode"] = "acme"
            acme.update(found)
        if not info["dkim_selectors"] and not info["accounts"] and not os.path.isdir(base):
            raise CommandExecutionError(
                f"nothing to export for {domain}: no DKIM key in {s['dkim_dir']} and no {base}"
            )
        manifest_domains[domain] = info
    pending = _collect_queue(s["state_dir"], manifest_domains, entries)
    _collect_acme(s["acme_state_dir"], acme, manifest_domains, entries, skipped)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"id": _minion_id(), "chatmail_salt": _tree_version()},
        "domains": manifest_domains,
        "pending_notifications": pending,
        "acme_files": len(acme),
        "skipped": skipped,
    }
    return entries, manifest


def _collect_dkim(s, domain, dkim_names, info, entries):
    """The domain's DKIM key files (no links) into ``entries``."""
    for name in dkim_names:
        prefix = f"{domain}."
        if name.startswith(prefix) and name.endswith(".private"):
            selector = name[len(prefix) : -len(".private")]
            path = os.path.join(s["dkim_dir"], name)
            if _valid_selector(selector) and os.path.isfile(path):
                if not os.path.islink(path):
                    info["dkim_selectors"].append(selector)
                    entries.append((f"dkim/{name}", path))


def _collect_mail(base, domain, info, entries, skipped):
    """The mailboxes below ``base`` (<mailboxes_dir>/<domain>): account
    directories, their directories and regular files; anything else skipped."""
    if not os.path.isdir(base):
        return
    entries.append((f"mail/{domain}", base))
    for account in sorted(os.listdir(base)):
        top = os.path.join(base, account)
        if not _account_name_ok(account, domain) or os.path.islink(top):
            skipped.append(top)
            continue
        if not os.path.isdir(top):
            skipped.append(top)
            continue
        info["accounts"] += 1
        entries.append((f"mail/{domain}/{account}", top))
        for rel, st in _walk(top):
            full = os.path.join(top, rel)
            if stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode):
                entries.append((f"mail/{domain}/{account}/{rel}", full))
                if stat.S_ISREG(st.st_mode):
                    info["files"] += 1
                    info["bytes"] += st.st_size
            else:
                skipped.append(full)


def _collect_queue(state_dir, domains, entries):
    """The push notification queue entries of ``domains``; returns their number."""
    queue = os.path.join(state_dir, QUEUE_DIRNAME)
    pending = 0
    if os.path.isdir(queue):
        entries.append((f"state/{QUEUE_DIRNAME}", queue))
        for name in sorted(os.listdir(queue)):
            path = os.path.join(queue, name)
            if name.startswith(".") or not os.path.isfile(path) or os.path.islink(path):
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    addr = str(json.load(fh)["addr"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if addr.rpartition("@")[2].strip("[]").lower() in domains:
                entries.append((f"state/{QUEUE_DIRNAME}/{name}", path))
                pending += 1
    return pending


def _collect_acme(acme_state_dir, acme, domains, entries, skipped):
    """acmetool's files of the domains' certificates that import would accept."""
    hostnames = _acme_hostnames(domains)
    for rel in sorted(x for x in acme if x):
        full = os.path.join(acme_state_dir, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            continue
        kind = "link" if stat.S_ISLNK(st.st_mode) else "dir" if stat.S_ISDIR(st.st_mode) else None
        if kind is None and stat.S_ISREG(st.st_mode):
            kind = "file"
        link = os.readlink(full) if kind == "link" else None
        # what the import would refuse does not travel (e.g. acmetool's haproxy files)
        if kind is None or _acme_problem(rel.split("/"), kind, link, hostnames):
            skipped.append(full)
            continue
        entries.append((f"acme/{rel}", full))


def export(path, domains=None, stop_intake=True, restart=False, **kwargs):
    """
    Write every DKIM key, account and mailbox of the relay's chatmail domains
    (and queued push notifications, acme certificates) into ONE archive at
    ``path`` (tar.gz, mode 0600; refused if ``path`` exists).

    path
        Where to write the archive (absolute; not inside the data directories).
    domains
        Only these domains (list or comma separated); default: every domain in
        ``chatmail.ini``.
    stop_intake
        Stop postfix, dovecot and chatmail-metadata before reading anything and
        leave them stopped (default ``True``): other relays cannot deliver, so
        they keep the mail queued and retry until DNS names the new host;
        clients cannot log in or change anything that the archive would miss.
        Restarting them would let mail land in mailboxes that are already
        copied.  On an error they are started again.
    restart
        Start the stopped services again after the archive is written (a
        backup rather than a move).

    Paths default to the host's ``chatmail.ini`` and the merged map's
    ``lookup`` (``ini``, ``dkim_dir``, ``keytable``, ``mailboxes_dir``,
    ``state_dir``, ``acme_state_dir`` may be given as keyword arguments).

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_migrate.export /root/relay-move.tar.gz
        salt-call chatmail_migrate.export /root/backup.tar.gz stop_intake=False
    """
    s = _settings(kwargs)
    path = os.path.abspath(str(path))
    if os.path.lexists(path):
        raise CommandExecutionError(f"{path} exists; refusing to overwrite it")
    if not os.path.isdir(os.path.dirname(path)):
        raise CommandExecutionError(f"directory {os.path.dirname(path)} does not exist")
    for key in ("dkim_dir", "mailboxes_dir", "state_dir", "acme_state_dir"):
        if path.startswith(s[key].rstrip("/") + "/"):
            raise CommandExecutionError(f"{path} is inside {key} {s[key]}; write it elsewhere")
    if domains is None:
        domains = s["domains"]
        if not domains:
            raise CommandExecutionError(
                f"no chatmail domains: {s['ini']} is missing or lists none; pass domains="
            )
    elif isinstance(domains, str):
        domains = [d for d in re.split(r"[\s,]+", domains) if d]
    domains = sorted({_valid_domain(d) for d in domains})

    stopped = _stop_intake() if stop_intake else []
    try:
        entries, manifest = _collect(s, domains)
        manifest["intake"] = {"stopped": stopped, "restarted": bool(restart and stopped)}
        vanished = _write_archive(path, manifest, entries)
    except BaseException:
        _start(stopped)
        raise
    if restart:
        _start(stopped)
    result = {
        "path": path,
        "size": os.path.getsize(path),
        "domains": manifest["domains"],
        "pending_notifications": manifest["pending_notifications"],
        "acme_files": manifest["acme_files"],
        "vanished": vanished,
    }
    if stopped and not restart:
        result["intake"] = (
            f"{', '.join(stopped)} stay stopped: senders queue mail and retry until DNS "
            f"points to the new host. To abort the move: systemctl start {' '.join(stopped)}. "
            "Keep a scheduled highstate from starting them (stop salt-minion)."
        )
    elif stopped:
        result["intake"] = f"{', '.join(stopped)} were stopped during the export and run again"
    return result


def _write_archive(path, manifest, entries):
    """Write ``manifest`` and then ``entries`` ([(arcname, source path)]) as
    a gzip tar to ``path`` (mode 0600, through a temporary file renamed into
    place, removed on any error).  Returns how many sources vanished while
    they were written."""
    fd, tmp = tempfile.mkstemp(prefix=".chatmail-export-", dir=os.path.dirname(path))
    try:
        os.fchmod(fd, 0o600)
        vanished = 0
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                data = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode = len(data), 0o600
                info.mtime = int(datetime.datetime.now().timestamp())
                tar.addfile(info, io.BytesIO(data))
                for arcname, source in entries:
                    try:
                        tar.add(source, arcname=arcname, recursive=False)
                    except FileNotFoundError:
                        vanished += 1
            raw.flush()
            os.fsync(raw.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return vanished


# ---------------------------------------------------------------- reading archives


class _Archive:
    """A validated archive: manifest, members by section, small files read."""

    def __init__(self, path):
        self.path = path
        self.manifest = None
        self.members = []  # (section, rel path inside the section, TarInfo)
        self.small = {}  # arcname -> bytes (password files, DKIM keys)


def _fail(path, problem):
    raise CommandExecutionError(f"{path}: {problem}")


def _split_name(path, member):
    name = member.name
    if member.isdir():
        name = name.rstrip("/")
    if not name or name.startswith("/") or "\\" in name or "\x00" in name:
        _fail(path, f"refusing member {member.name!r}: absolute or malformed name")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        _fail(path, f"refusing member {member.name!r}: '..', '.' or empty path component")
    return parts


def _check_manifest(path, data):
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        _fail(path, f"manifest.json is not JSON: {exc}")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        _fail(path, f"not a chatmail_migrate archive of format {FORMAT}")
    domains = manifest.get("domains")
    if not isinstance(domains, dict) or not domains:
        _fail(path, "manifest lists no domains")
    for domain in domains:
        try:
            if _valid_domain(domain) != domain:
                raise SaltInvocationError(domain)
        except SaltInvocationError:
            _fail(path, f"manifest names an invalid domain {domain!r}")
    return manifest


def _read_archive(path, keep_small=True):
    path = os.path.abspath(str(path))
    arch = _Archive(path)
    if not os.path.isfile(path):
        raise CommandExecutionError(f"{path}: no such archive")
    seen = set()
    links = set()
    dirs = set()
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for index, member in enumerate(tar):
                parts = _split_name(path, member)
                name = "/".join(parts)
                if index == 0:
                    if name != MANIFEST or not member.isreg() or member.size > MANIFEST_MAX:
                        _fail(path, "the first member must be manifest.json")
                    arch.manifest = _check_manifest(path, tar.extractfile(member).read())
                    continue
                if name in seen:
                    _fail(path, f"member {name!r} appears twice")
                seen.add(name)
                section, rel = parts[0], parts[1:]
                if section not in SECTIONS or not rel:
                    _fail(path, f"unexpected member {name!r}")
                for i in range(1, len(parts)):
                    if "/".join(parts[:i]) in links:
                        _fail(path, f"member {name!r} lies below a link")
                if len(rel) > 1 and "/".join(parts[:-1]) not in dirs:
                    _fail(path, f"member {name!r} comes before (or without) its directory")
                if member.isdir():
                    dirs.add(name)
                if member.issym():
                    if section != "acme":
                        _fail(path, f"refusing link {name!r} (links are only allowed in acme/)")
                    links.add(name)
                elif not (member.isreg() or member.isdir()):
                    _fail(path, f"refusing {name!r}: only files, directories (and links in acme/)")
                _check_section(arch, path, section, rel, member)
                if keep_small and member.isreg() and _is_small(section, rel):
                    if member.size > 65536:
                        _fail(path, f"{name} is too large")
                    arch.small[name] = tar.extractfile(member).read()
                arch.members.append((section, rel, member))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise CommandExecutionError(f"{path}: unreadable archive: {exc}") from None
    if arch.manifest is None:
        _fail(path, "empty archive")
    return arch


def _is_small(section, rel):
    return section == "dkim" or (section == "mail" and len(rel) == 3 and rel[2] == "password")


def _check_section(arch, path, section, rel, member):
    domains = arch.manifest["domains"]
    name = "/".join([section, *rel])
    if section == "dkim":
        if len(rel) != 1 or not member.isreg() or not rel[0].endswith(".private"):
            _fail(path, f"unexpected member {name!r} in dkim/")
        domain, _, selector = rel[0][: -len(".private")].rpartition(".")
        if domain not in domains or not _valid_selector(selector):
            _fail(path, f"{name!r} is no DKIM key of a domain in the manifest")
    elif section == "mail":
        if rel[0] not in domains:
            _fail(path, f"{name!r} belongs to a domain the manifest does not list")
        if len(rel) >= 2 and not _account_name_ok(rel[1], rel[0]):
            _fail(path, f"{name!r}: {rel[1]!r} is not an address of {rel[0]}")
        if len(rel) <= 2 and not member.isdir():
            _fail(path, f"{name!r} must be a directory")
    elif section == "state":
        if rel[0] != QUEUE_DIRNAME or len(rel) > 2 or (len(rel) == 2 and not member.isreg()):
            _fail(path, f"unexpected member {name!r} in state/")
    elif section == "acme":
        kind = "link" if member.issym() else "dir" if member.isdir() else "file"
        problem = _acme_problem(rel, kind, member.linkname, _acme_hostnames(domains))
        if problem:
            _fail(path, f"refusing {name!r}: {problem}")


def inspect(path):
    """
    Check an archive written by ``chatmail_migrate.export`` (names, links,
    file types, manifest) and return its manifest.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_migrate.inspect /root/relay-move.tar.gz
    """
    arch = _read_archive(path, keep_small=False)
    manifest = dict(arch.manifest)
    manifest["members"] = len(arch.members) + 1
    return manifest


# ---------------------------------------------------------------- import
#
# Every write below a data directory goes through directory file descriptors
# opened with O_NOFOLLOW, starting at the section's root (whose owner is
# checked): service accounts own their data directories (vmail the mailbox
# tree, opendkim the key directory) and could put links there at any moment,
# so no path below a root is ever resolved by name.  Files are created in a
# private staging directory inside the root (O_EXCL, modes and owners set on
# the open descriptor) and renamed into place relative to descriptors.

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# Files of an account that doveauth and chatmail-metadata write (group
# dovecot, the daemons' primary group); Dovecot writes the rest as vmail.
_DAEMON_FILES = ("password", "enforceE2EEincoming", "metadata.json")


class _NotDir(Exception):
    """A path component below a root is not a directory (or is a link)."""


def _ids(user):
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise CommandExecutionError(
            f"user {user!r} does not exist on this host: converge it first "
            "(state.apply with the relay's pillar), then import"
        ) from None
    return pw.pw_uid, pw.pw_gid


def _gid(name, fallback):
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return fallback


def _section_root(s, section):
    return {
        "dkim": s["dkim_dir"],
        "mail": s["mailboxes_dir"],
        "state": s["state_dir"],
        "acme": s["acme_state_dir"],
    }[section]


def _root_owner(s, section):
    """(uid, gid, mode) a section's root directory has on a converged host."""
    if section == "dkim":
        return (*s["_dkim_ids"], 0o750)
    if section == "acme":
        return (*s["_acme_ids"], 0o755)
    return (*s["_vmail_ids"], 0o700)


def _rule(s, section, rel, is_dir):
    """(uid, gid, mode) of what the import writes at <section>/<rel>: what
    the relay's own daemons give it (doveauth, Dovecot, chatmail-metadata,
    opendkim, acmetool), never the archive's numbers or bits."""
    if section == "dkim":
        uid, gid = s["_dkim_ids"]
        return uid, gid, 0o600
    if section == "acme":
        uid, gid = s["_acme_ids"]
        private = rel[0] in ("accounts", "keys")
        if is_dir:
            return uid, gid, 0o700 if private else 0o755
        return uid, gid, 0o600 if private else 0o644
    uid, gid = s["_vmail_ids"]
    daemon_gid = s["_dovecot_gid"]
    if section == "state":
        return uid, daemon_gid, 0o700 if is_dir else 0o600
    if len(rel) == 2 or (len(rel) == 3 and rel[2] in _DAEMON_FILES):
        gid = daemon_gid
    if is_dir:
        return uid, gid, 0o700
    if len(rel) >= 3 and rel[-1].startswith("dovecot-uidvalidity."):
        return uid, gid, 0o444  # Dovecot's empty marker file
    return uid, gid, 0o600


def _open_root(s, section, create):
    """A descriptor of the section's root directory.  An operator's links in
    the configured path are followed, but the directory must belong to its
    service account (root for acmetool's state): a mailbox root that vmail
    swapped for a link to a root-owned directory is refused."""
    path = _section_root(s, section)
    uid, gid, mode = _root_owner(s, section)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        if not create:
            return None
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.mkdir(path, 0o700)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    except NotADirectoryError:
        raise CommandExecutionError(f"{path} is not a directory") from None
    st = os.fstat(fd)
    if st.st_uid != uid or stat.S_IMODE(st.st_mode) & 0o002:
        os.close(fd)
        owner = _user_name(uid)
        raise CommandExecutionError(
            f"{path} ({os.path.realpath(path)}) is not owned by {owner} or is world-writable:"
            " refusing to write below it"
        )
    return fd


def _user_name(uid):
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _walk_dirs(rootfd, parts):
    """A new descriptor of rootfd/parts (directories only, no link followed);
    None when a component is missing; _NotDir when one is not a directory."""
    fd = os.dup(rootfd)
    try:
        for part in parts:
            try:
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                os.close(fd)
                return None
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    raise _NotDir(part) from None
                raise
            os.close(fd)
            fd = nfd
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
    return fd


def _lstat_below(rootfd, parts, display):
    """lstat of rootfd/parts, None when missing; refuses a path whose
    directories are not plain directories."""
    try:
        fd = _walk_dirs(rootfd, parts[:-1])
    except _NotDir:
        raise CommandExecutionError(
            f"{display}: a component exists and is not a directory"
        ) from None
    if fd is None:
        return None
    try:
        return os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(fd)


_LINK = object()  # a link (or other non-file) where a file was expected


def _read_below(rootfd, parts):
    """Content of the regular file rootfd/parts; None when missing, _LINK
    when something else (a link, a fifo, a directory) is there.  Nothing is
    followed and nothing blocks."""
    try:
        dirfd = _walk_dirs(rootfd, parts[:-1])
    except _NotDir:
        return _LINK
    if dirfd is None:
        return None
    try:
        fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dirfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            return _LINK
        raise
    finally:
        os.close(dirfd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return _LINK
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _same_at(src_dirfd, dst_dirfd, name):
    """Whether two directory entries are regular files with equal content."""
    fds = []
    try:
        for dirfd in (src_dirfd, dst_dirfd):
            try:
                fds.append(os.open(name, _READ_FLAGS, dir_fd=dirfd))
            except OSError:
                return False
        sts = [os.fstat(fd) for fd in fds]
        if not all(stat.S_ISREG(st.st_mode) for st in sts) or sts[0].st_size != sts[1].st_size:
            return False
        digests = []
        for fd in fds:
            h = hashlib.sha256()
            while chunk := os.read(fd, 1 << 20):
                h.update(chunk)
            digests.append(h.digest())
        return digests[0] == digests[1]
    finally:
        for fd in fds:
            os.close(fd)


def _plan(arch, s, roots, force):
    """Conflicts that stop the import, and what changes (before any write)."""
    conflicts = []
    replaced_keys = []
    domains = arch.manifest["domains"]
    if s["has_ini"]:
        missing = [d for d in domains if d not in s["domains"]]
        if missing:
            conflicts.append(
                f"domain(s) {', '.join(missing)} not configured on this host: add them to "
                "its pillar and converge first"
            )
    for name, data in sorted(arch.small.items()):
        parts = name.split("/")
        if parts[0] == "dkim":
            try:
                serialization.load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as exc:
                raise CommandExecutionError(
                    f"{arch.path}: {name} is no private key: {exc}"
                ) from None
            current = _read_below(roots["dkim"], parts[1:]) if roots.get("dkim") else None
            if current is not None and current != data:
                replaced_keys.append(parts[1])
        elif roots.get("mail") is not None:
            current = _read_below(roots["mail"], parts[1:])
            if current is _LINK:
                conflicts.append(f"account {parts[2]}: its password file here is not a file")
            elif current is not None and current != data and not force:
                conflicts.append(
                    f"account {parts[2]} exists here with a different password "
                    "(force=True replaces it)"
                )
    accounts = {"new": 0, "existing": 0}
    for section, rel, member in arch.members:
        rootfd = roots.get(section)
        if rootfd is None:
            if section == "mail" and len(rel) == 2:
                accounts["new"] += 1
            continue
        target = os.path.join(_section_root(s, section), *rel)
        st = _lstat_below(rootfd, rel, target)
        if st is None:
            if section == "mail" and len(rel) == 2:
                accounts["new"] += 1
            continue
        if member.isdir() and not stat.S_ISDIR(st.st_mode):
            raise CommandExecutionError(f"{target} exists and is not a directory")
        if not member.isdir() and stat.S_ISDIR(st.st_mode):
            conflicts.append(f"{target} is a directory here, a file in the archive")
        if section == "mail" and len(rel) == 2:
            accounts["existing"] += 1
    return conflicts, replaced_keys, accounts


class _Stage:
    """A private directory (root, 0700) inside a section's root, written
    only through descriptors; dirfd() opens its subdirectories without
    following links and keeps a few open."""

    def __init__(self, rootfd, root_path):
        self.rootfd = rootfd
        self.name = f".chatmail-import-{secrets.token_hex(8)}"
        self.path = os.path.join(root_path, self.name)
        os.mkdir(self.name, 0o700, dir_fd=rootfd)
        self.fd = os.open(self.name, _DIR_FLAGS, dir_fd=rootfd)
        st = os.fstat(self.fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            os.close(self.fd)
            raise CommandExecutionError(f"{self.path}: staging directory was tampered with")
        self._open = {}

    def dirfd(self, parts):
        parts = tuple(parts)
        if not parts:
            return self.fd
        if parts in self._open:
            return self._open[parts]
        parent = self.dirfd(parts[:-1])
        fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
        self.keep(parts, fd)
        return fd

    def keep(self, parts, fd):
        if len(self._open) >= 64:
            for key in sorted(self._open, key=len, reverse=True)[:32]:
                os.close(self._open.pop(key))
        self._open[tuple(parts)] = fd

    def close(self):
        for fd in self._open.values():
            os.close(fd)
        self._open = {}
        try:
            for name in os.listdir(self.fd):
                shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)
                try:
                    os.unlink(name, dir_fd=self.fd)
                except OSError:
                    pass
        finally:
            os.close(self.fd)
        try:
            os.rmdir(self.name, dir_fd=self.rootfd)
        except OSError:
            pass


def _stage(arch, s, roots, stages):
    """Write every member below its section's staging directory, with the
    mode and owner the tree's rules give it."""
    with tarfile.open(arch.path, mode="r:gz") as tar:
        members = {"/".join([section, *rel]): (section, rel) for section, rel, _m in arch.members}
        dir_times = []
        for member in tar:
            key = member.name.rstrip("/") if member.isdir() else member.name
            if key not in members:
                continue
            section, rel = members[key]
            if section not in stages:
                if roots.get(section) is None:
                    roots[section] = _open_root(s, section, create=True)
                stages[section] = _Stage(roots[section], _section_root(s, section))
            stage = stages[section]
            parent = stage.dirfd(rel[:-1])
            name = rel[-1]
            uid, gid, mode = _rule(s, section, rel, member.isdir())
            if member.isdir():
                os.mkdir(name, 0o700, dir_fd=parent)
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, mode)
                stage.keep(rel, fd)
                dir_times.append((section, rel, member.mtime))
            elif member.issym():
                os.symlink(member.linkname, name, dir_fd=parent)
                os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
            else:
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(name, flags, 0o600, dir_fd=parent)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(member), out)
                    out.flush()
                    os.fsync(fd)
                    os.fchown(fd, uid, gid)
                    os.fchmod(fd, mode)
                    os.utime(fd, (member.mtime, member.mtime))
        for section, rel, mtime in reversed(dir_times):
            parent = stages[section].dirfd(rel[:-1])
            os.utime(rel[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)


def _merge(src_dirfd, dst_dirfd, name, display, force, report):
    """Move the staged entry src_dirfd/name to dst_dirfd/name: new entries
    move in whole; files that differ keep the host's version unless force
    (passwords were checked in the plan).  Only descriptors, no link followed."""
    try:
        dst_st = os.stat(name, dir_fd=dst_dirfd, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(name, name, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)
        report["added"] += 1
        return
    src_st = os.stat(name, dir_fd=src_dirfd, follow_symlinks=False)
    if stat.S_ISDIR(src_st.st_mode) and stat.S_ISDIR(dst_st.st_mode):
        sfd = os.open(name, _DIR_FLAGS, dir_fd=src_dirfd)
        try:
            try:
                dfd = os.open(name, _DIR_FLAGS, dir_fd=dst_dirfd)
            except OSError:
                raise CommandExecutionError(f"{display} changed during the import") from None
            try:
                for child in sorted(os.listdir(sfd)):
                    _merge(sfd, dfd, child, os.path.join(display, child), force, report)
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        return
    if stat.S_ISLNK(src_st.st_mode) and stat.S_ISLNK(dst_st.st_mode):
        if os.readlink(name, dir_fd=src_dirfd) == os.readlink(name, dir_fd=dst_dirfd):
            report["same"] += 1
            return
    elif _same_at(src_dirfd, dst_dirfd, name):
        report["same"] += 1
        return
    if stat.S_ISDIR(dst_st.st_mode) or stat.S_ISDIR(src_st.st_mode):
        raise CommandExecutionError(f"{display}: a file and a directory of the same name")
    if force:
        os.replace(name, name, src_dir_fd=src_dirfd, dst_dir_fd=dst_dirfd)
        report["replaced"].append(display)
    else:
        report["kept"].append(display)


def _install_keys(stage, rootfd, s, replaced, result):
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in sorted(os.listdir(stage.fd)):
        dst = os.path.join(s["dkim_dir"], name)
        if name in replaced:
            backup = f"{name}.replaced-{stamp}"
            # the entry itself (a link stays a link), never what it points at
            os.link(name, backup, src_dir_fd=rootfd, dst_dir_fd=rootfd, follow_symlinks=False)
            os.replace(name, name, src_dir_fd=stage.fd, dst_dir_fd=rootfd)
            result["dkim"]["replaced"].append(
                {"key": dst, "previous": os.path.join(s["dkim_dir"], backup)}
            )
            continue
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=rootfd)
        except FileNotFoundError:
            os.rename(name, name, src_dir_fd=stage.fd, dst_dir_fd=rootfd)
            result["dkim"]["added"].append(dst)
            continue
        try:
            uid, gid = s["_dkim_ids"]
            os.fchown(fd, uid, gid)
            os.fchmod(fd, 0o600)
        finally:
            os.close(fd)
        result["dkim"]["same"].append(dst)


def _restart(units):
    """Restart those of units that run (try-restart); returns the restarted."""
    done = []
    for unit in units:
        if _active(unit):
            code, out = _systemctl("try-restart", unit)
            if code == 0:
                done.append(unit)
            else:
                log.error("chatmail_migrate: restarting %s failed: %s", unit, out)
    return done


def import_(path, force=False, reload=True, **kwargs):
    """
    Restore an archive written by ``chatmail_migrate.export`` on this host:
    DKIM keys (owner opendkim, 0600), accounts and mailboxes (owner vmail),
    queued push notifications and acme certificates.

    Run it on the new host after its first highstate with the same pillar
    (the service accounts and directories must exist), then run a highstate
    again (it rewrites the zone fragment with the imported DKIM key).

    path
        The archive.
    force
        Replace an existing account's password file that differs from the
        archive's (refused otherwise, nothing is written), and replace other
        differing files (otherwise the host's version is kept).
    reload
        Restart the services that read what changed (opendkim for keys,
        dovecot for existing accounts, chatmail-metadata for queued
        notifications, postfix/dovecot/nginx for certificates), when running.

    A DKIM key file of the same domain and selector that differs (the key the
    first highstate made before the import, never published) is replaced by
    the archive's key, which is the one DNS publishes; the previous file stays
    next to it as ``<name>.replaced-<time>``.

    CLI Example:

    .. code-block:: bash

        salt-call chatmail_migrate.import /root/relay-move.tar.gz
        salt-call chatmail_migrate.import /root/relay-move.tar.gz force=True
    """
    s = _settings(kwargs)
    arch = _read_archive(path)
    s["_vmail_ids"] = _ids(s["vmail_user"])
    s["_dkim_ids"] = _ids(s["dkim_user"]) if any(x[0] == "dkim" for x in arch.members) else None
    s["_acme_ids"] = _ids(s["acme_user"])
    s["_dovecot_gid"] = _gid("dovecot", s["_vmail_ids"][1])
    sections = {x[0] for x in arch.members}
    roots = {}
    stages = {}
    try:
        for section in sorted(sections):
            roots[section] = _open_root(s, section, create=False)
        conflicts, replaced_keys, accounts = _plan(arch, s, roots, force)
        if conflicts:
            raise CommandExecutionError(
                f"{arch.path}: not imported, nothing changed:\n- " + "\n- ".join(conflicts)
            )
        try:
            _stage(arch, s, roots, stages)
        except OSError as exc:
            raise CommandExecutionError(
                f"staging the import failed, nothing changed: {exc}"
            ) from None

        result = _install_stages(arch, s, roots, stages, replaced_keys, force)
    finally:
        for stage in stages.values():
            stage.close()
        for fd in roots.values():
            if fd is not None:
                os.close(fd)

    result["accounts"] = accounts
    result["restarted"] = _restart(_units_to_restart(result)) if reload else []
    return result


def _install_stages(arch, s, roots, stages, replaced_keys, force):
    """Move the staged sections into place: DKIM keys (see _install_keys),
    then mail, state and acme merged file by file.  Returns the result
    without ``accounts`` and ``restarted``."""
    result = {
        "domains": sorted(arch.manifest["domains"]),
        "dkim": {"added": [], "same": [], "replaced": []},
    }
    if "dkim" in stages:
        _install_keys(stages["dkim"], roots["dkim"], s, replaced_keys, result)
    for section in ("mail", "state", "acme"):
        if section not in stages:
            continue
        report = {"added": 0, "same": 0, "replaced": [], "kept": []}
        stage = stages[section]
        root = _section_root(s, section)
        for name in sorted(os.listdir(stage.fd)):
            _merge(stage.fd, roots[section], name, os.path.join(root, name), force, report)
        result[section] = report
    return result


def _units_to_restart(result):
    """The running services that read what an import changed."""
    units = []
    if result["dkim"]["added"] or result["dkim"]["replaced"]:
        units.append("opendkim")
    if result.get("mail", {}).get("replaced"):
        units.append("dovecot")
    if result.get("state", {}).get("added"):
        units.append("chatmail-metadata")
    acme = result.get("acme", {})
    if acme.get("added") or acme.get("replaced"):
        units += [u for u in ("postfix", "dovecot", "nginx") if u not in units]
    return units
