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
links (outside ``acme/``, or pointing out of it), device files and names of
domains the manifest does not list are refused before anything is written.
Files are staged next to their destination first and then renamed into
place, owned by the local service accounts, so a bad archive or a full disk
leaves the host as it was.

:depends: cryptography (DKIM keys are checked before they are installed)
"""

import datetime
import grp
import hashlib
import io
import json
import logging
import os
import pwd
import re
import shutil
import stat
import subprocess
import tarfile
import tempfile
import zlib
from configparser import ConfigParser
from configparser import Error as ConfigParserError

try:
    from salt.exceptions import CommandExecutionError
except ImportError:  # pragma: no cover - only outside salt

    class CommandExecutionError(Exception):
        pass


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

DEFAULTS = {
    "ini": "/etc/chatmail/chatmail.ini",
    "dkim_dir": "/etc/dkimkeys",
    "keytable": "/etc/opendkim/KeyTable",
    "mailboxes_dir": "/home/vmail/mail",
    "state_dir": "/var/lib/chatmaild",
    "acme_dir": "/var/lib/acme",
    "vmail_user": "vmail",
    "dkim_user": "opendkim",
    "acme_user": "root",
}

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9])?$")
_IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")
_SELECTOR = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")
_LOCALPART = re.compile(r"^[^\x00-\x20/@\x7f]+$")


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "chatmail_migrate: the python 'cryptography' library is not installed")
    return __virtualname__


# ---------------------------------------------------------------- settings


def _pillar(key, default):
    """A pillar value as default for an argument (see _utils/chatmail_util.py)."""
    return __utils__["chatmail_util.pillar_get"](__salt__, key, default)


def _valid_domain(domain):
    domain = str(domain).strip().lower().rstrip(".").strip("[]")
    if _IPV4.match(domain):
        return domain
    labels = domain.split(".")
    if len(domain) > 253 or len(labels) < 2 or not all(_LABEL.match(x) for x in labels):
        raise CommandExecutionError(f"invalid chatmail domain: {domain!r}")
    return domain


def _read_ini(path):
    """(domains, params, tls modes) of a chatmail.ini, or None when absent."""
    if not os.path.isfile(path):
        return None
    parser = ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except ConfigParserError as exc:
        raise CommandExecutionError(f"{path}: {exc}") from None
    params = dict(parser["params"]) if parser.has_section("params") else {}
    domains = [d for d in re.split(r"[\s,]+", params.get("mail_domain", "")) if d]
    modes = {}
    for section in parser.sections():
        if section.startswith("domain:"):
            modes[section[len("domain:") :]] = parser[section].get("tls_mode", "")
    return [_valid_domain(d) for d in domains], params, modes


def _settings(overrides):
    """Paths and accounts: keyword overrides, else the host's chatmail.ini and
    pillar ``chatmail:lookup``, else the tree's defaults."""
    # salt adds __pub_* keyword arguments when called from the command line
    overrides = {k: v for k, v in overrides.items() if not k.startswith("__")}
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise CommandExecutionError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    s = dict(DEFAULTS)
    s["ini"] = overrides.get("ini") or _pillar("chatmail:lookup:paths:ini", DEFAULTS["ini"])
    s["dkim_dir"] = _pillar("chatmail:lookup:paths:dkim_dir", DEFAULTS["dkim_dir"])
    s["vmail_user"] = _pillar("chatmail:lookup:users:vmail", DEFAULTS["vmail_user"])
    ini = _read_ini(s["ini"])
    s["domains"], s["tls_modes"] = [], {}
    if ini:
        s["domains"], params, s["tls_modes"] = ini
        for key in ("mailboxes_dir", "state_dir"):
            if params.get(key):
                s[key] = params[key]
    s["has_ini"] = ini is not None
    s.update({k: v for k, v in overrides.items() if v})
    for key in ("dkim_dir", "keytable", "mailboxes_dir", "state_dir", "acme_dir"):
        if not os.path.isabs(str(s[key])):
            raise CommandExecutionError(f"{key} must be an absolute path: {s[key]!r}")
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
        for name in dkim_names:
            prefix = f"{domain}."
            if name.startswith(prefix) and name.endswith(".private"):
                selector = name[len(prefix) : -len(".private")]
                path = os.path.join(s["dkim_dir"], name)
                if _SELECTOR.match(selector) and os.path.isfile(path):
                    if not os.path.islink(path):
                        info["dkim_selectors"].append(selector)
                        entries.append((f"dkim/{name}", path))
        info["active_selector"] = active.get(domain)
        base = os.path.join(s["mailboxes_dir"], domain)
        if os.path.isdir(base):
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
        mode = s["tls_modes"].get(domain, "")
        info["tls_mode"] = mode or None
        if mode == "external":
            info["note"] = "external TLS files are not in the archive: copy them yourself"
        found = _acme_entries(s["acme_dir"], domain)
        if found:
            info["tls_mode"] = "acme"
            acme.update(found)
        if not info["dkim_selectors"] and not info["accounts"] and not os.path.isdir(base):
            raise CommandExecutionError(
                f"nothing to export for {domain}: no DKIM key in {s['dkim_dir']} and no {base}"
            )
        manifest_domains[domain] = info
    queue = os.path.join(s["state_dir"], QUEUE_DIRNAME)
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
            if addr.rpartition("@")[2].strip("[]").lower() in manifest_domains:
                entries.append((f"state/{QUEUE_DIRNAME}/{name}", path))
                pending += 1
    for rel in sorted(x for x in acme if x):
        entries.append((f"acme/{rel}", os.path.join(s["acme_dir"], rel)))
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

    Paths default to the host's ``chatmail.ini`` and pillar
    ``chatmail:lookup`` (``ini``, ``dkim_dir``, ``keytable``, ``mailboxes_dir``,
    ``state_dir``, ``acme_dir`` may be given as keyword arguments).

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
    for key in ("dkim_dir", "mailboxes_dir", "state_dir", "acme_dir"):
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
    tmp = None
    try:
        entries, manifest = _collect(s, domains)
        manifest["intake"] = {"stopped": stopped, "restarted": bool(restart and stopped)}
        fd, tmp = tempfile.mkstemp(prefix=".chatmail-export-", dir=os.path.dirname(path))
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
        tmp = None
    except BaseException:
        if tmp:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
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
                raise CommandExecutionError(domain)
        except CommandExecutionError:
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
                    target = member.linkname
                    resolved = os.path.normpath(
                        os.path.join(*rel[:-1], target) if rel[:-1] else target
                    )
                    if os.path.isabs(target) or resolved == ".." or resolved.startswith("../"):
                        _fail(path, f"refusing link {name!r} -> {target!r}: it leaves acme/")
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
        if domain not in domains or not _SELECTOR.match(selector):
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


def _digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def _same_file(a, b):
    try:
        sa, sb = os.lstat(a), os.lstat(b)
    except FileNotFoundError:
        return False
    if not (stat.S_ISREG(sa.st_mode) and stat.S_ISREG(sb.st_mode)) or sa.st_size != sb.st_size:
        return False
    return _digest(a) == _digest(b)


def _read_bytes(path):
    """The file's content; None when there is no file (a directory in the way
    is reported by the plan)."""
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None


def _check_dir_chain(root, rel_parts):
    """Refuse when an existing component below root is not a plain directory."""
    current = root
    for part in rel_parts:
        current = os.path.join(current, part)
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        if not stat.S_ISDIR(st.st_mode):
            raise CommandExecutionError(f"{current} exists and is not a directory")


def _staging_dir(root):
    """A private directory on root's filesystem for files before they move in."""
    parent = os.path.dirname(root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    if os.stat(parent).st_dev != os.stat(root).st_dev:
        parent = root
    return tempfile.mkdtemp(prefix=".chatmail-import-", dir=parent)


def _plan(arch, s, force):
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
            current = _read_bytes(os.path.join(s["dkim_dir"], parts[1]))
            if current is not None and current != data:
                replaced_keys.append(parts[1])
        else:
            target = os.path.join(s["mailboxes_dir"], *parts[1:])
            current = _read_bytes(target)
            if current is not None and current != data and not force:
                conflicts.append(
                    f"account {parts[2]} exists here with a different password "
                    "(force=True replaces it)"
                )
    accounts = {"new": 0, "existing": 0}
    for section, rel, member in arch.members:
        root = _section_root(s, section)
        target = os.path.join(root, *rel)
        _check_dir_chain(root, rel[:-1] if not member.isdir() else rel)
        if not member.isdir() and os.path.isdir(target) and not os.path.islink(target):
            conflicts.append(f"{target} is a directory here, a file in the archive")
        if section == "mail" and len(rel) == 2:
            accounts["existing" if os.path.isdir(target) else "new"] += 1
    return conflicts, replaced_keys, accounts


def _section_root(s, section):
    return {
        "dkim": s["dkim_dir"],
        "mail": s["mailboxes_dir"],
        "state": s["state_dir"],
        "acme": s["acme_dir"],
    }[section]


def _owner(s, section, member):
    """uid, gid and mode for a member: the local service accounts, never the
    archive's numbers; permission bits only (no setuid/setgid/sticky)."""
    if section == "dkim":
        uid, gid = s["_dkim_ids"]
        return uid, gid, 0o600
    if section == "acme":
        uid, gid = s["_acme_ids"]
    else:
        uid, gid = s["_vmail_ids"]
        # account directories and password files belong to group dovecot
        if member.gname == "dovecot":
            gid = _gid("dovecot", gid)
    mode = member.mode & 0o777
    if member.isdir():
        mode |= 0o700  # the owner can always enter its own directories
    return uid, gid, mode


def _stage(arch, s, stages):
    """Write every member below its section's staging directory."""
    with tarfile.open(arch.path, mode="r:gz") as tar:
        members = {"/".join([section, *rel]): (section, rel) for section, rel, _m in arch.members}
        dir_times = []
        for member in tar:
            key = member.name.rstrip("/") if member.isdir() else member.name
            if key not in members:
                continue
            section, rel = members[key]
            if section not in stages:
                stages[section] = _staging_dir(_section_root(s, section))
            dest = os.path.join(stages[section], *rel)
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            uid, gid, mode = _owner(s, section, member)
            if member.isdir():
                os.makedirs(dest, mode=0o700, exist_ok=True)
                os.chmod(dest, mode)
                dir_times.append((dest, member.mtime))
            elif member.issym():
                os.symlink(member.linkname, dest)
                os.lchown(dest, uid, gid)
                continue
            else:
                fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(tar.extractfile(member), out)
                    out.flush()
                    os.fsync(out.fileno())
                os.chmod(dest, mode)
                os.utime(dest, (member.mtime, member.mtime))
            os.chown(dest, uid, gid)
        for dest, mtime in reversed(dir_times):
            os.utime(dest, (mtime, mtime))


def _merge(src, dst, force, report):
    """Move the staged tree src into dst: new entries move in whole; files
    that differ keep the host's version unless force (passwords were checked
    in the plan)."""
    try:
        dst_st = os.lstat(dst)
    except FileNotFoundError:
        os.rename(src, dst)
        report["added"] += 1
        return
    src_st = os.lstat(src)
    if stat.S_ISDIR(src_st.st_mode) and stat.S_ISDIR(dst_st.st_mode):
        for name in sorted(os.listdir(src)):
            _merge(os.path.join(src, name), os.path.join(dst, name), force, report)
        return
    if stat.S_ISLNK(src_st.st_mode) and stat.S_ISLNK(dst_st.st_mode):
        if os.readlink(src) == os.readlink(dst):
            report["same"] += 1
            return
    elif _same_file(src, dst):
        report["same"] += 1
        return
    if stat.S_ISDIR(dst_st.st_mode) or stat.S_ISDIR(src_st.st_mode):
        raise CommandExecutionError(f"{dst}: a file and a directory of the same name")
    if force:
        os.replace(src, dst)
        report["replaced"].append(dst)
    else:
        report["kept"].append(dst)


def _install_keys(stage, s, replaced, result):
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    for name in sorted(os.listdir(stage)):
        src, dst = os.path.join(stage, name), os.path.join(s["dkim_dir"], name)
        if name in replaced:
            backup = f"{dst}.replaced-{stamp}"
            os.link(dst, backup)
            os.replace(src, dst)
            result["dkim"]["replaced"].append({"key": dst, "previous": backup})
        elif os.path.lexists(dst):
            uid, gid = s["_dkim_ids"]
            os.chown(dst, uid, gid)
            os.chmod(dst, 0o600)
            result["dkim"]["same"].append(dst)
        else:
            os.rename(src, dst)
            result["dkim"]["added"].append(dst)


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
    conflicts, replaced_keys, accounts = _plan(arch, s, force)
    if conflicts:
        raise CommandExecutionError(
            f"{arch.path}: not imported, nothing changed:\n- " + "\n- ".join(conflicts)
        )

    stages = {}
    try:
        _stage(arch, s, stages)
    except BaseException as exc:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(exc, OSError):
            raise CommandExecutionError(
                f"staging the import failed, nothing changed: {exc}"
            ) from None
        raise

    result = {
        "domains": sorted(arch.manifest["domains"]),
        "dkim": {"added": [], "same": [], "replaced": []},
    }
    try:
        if "dkim" in stages:
            _install_keys(stages["dkim"], s, replaced_keys, result)
        for section in ("mail", "state", "acme"):
            if section not in stages:
                continue
            report = {"added": 0, "same": 0, "replaced": [], "kept": []}
            root = _section_root(s, section)
            for name in sorted(os.listdir(stages[section])):
                _merge(
                    os.path.join(stages[section], name),
                    os.path.join(root, name),
                    force,
                    report,
                )
            result[section] = report
    finally:
        for stage in stages.values():
            shutil.rmtree(stage, ignore_errors=True)

    result["accounts"] = accounts
    units = []
    if result["dkim"]["added"] or result["dkim"]["replaced"]:
        units.append("opendkim")
    mail = result.get("mail", {})
    if mail.get("replaced"):
        units.append("dovecot")
    if result.get("state", {}).get("added"):
        units.append("chatmail-metadata")
    acme = result.get("acme", {})
    if acme.get("added") or acme.get("replaced"):
        units += [u for u in ("postfix", "dovecot", "nginx") if u not in units]
    result["restarted"] = _restart(units) if reload else []
    return result
