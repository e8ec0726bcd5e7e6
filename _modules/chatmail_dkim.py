"""
DKIM signing keys of chatmail domains.

One RSA key per domain and selector lives in ``<keydir>/<domain>.<selector>.private``
(PEM, mode 0600, owned by the OpenDKIM user).  A key is created once and never
overwritten by this module: rotating means creating a key under a NEW selector
(see the ``chatmail_dkim.key_present`` state), the old key file stays in place
so that mail signed with it can still be verified while DNS catches up.

The public half is published in DNS as ``<selector>._domainkey.<domain>`` TXT
``v=DKIM1;k=rsa;p=<base64 SubjectPublicKeyInfo>``.

:depends: cryptography
"""

import base64
import errno
import grp
import logging
import os
import pwd

from salt.exceptions import CommandExecutionError, SaltInvocationError

try:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    HAS_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the minion's python
    HAS_CRYPTOGRAPHY = False

log = logging.getLogger(__name__)

__virtualname__ = "chatmail_dkim"

DEFAULT_SELECTOR = "opendkim"
KEY_MODE = 0o600
# a TXT character-string holds at most 255 octets
TXT_CHUNK = 255


def __virtual__():
    if not HAS_CRYPTOGRAPHY:
        return (False, "chatmail_dkim: the python 'cryptography' library is not installed")
    return __virtualname__


def _check_name(domain, selector):
    """The canonical domain and the selector (the rules of
    _utils/chatmail_util.py), refusing names that could escape keydir."""
    domain = __utils__["chatmail_util.domain_arg"](domain, "DKIM domain")
    try:
        selector = __utils__["chatmail_util.check_selector"](selector)
    except ValueError as exc:
        raise SaltInvocationError(f"invalid DKIM selector: {exc}") from None
    return domain, selector


def _keydir(keydir):
    """``keydir``, else ``lookup:paths:dkim_dir`` of the merged map."""
    keydir = str(keydir or __utils__["chatmail_util.lookup"](__salt__)["paths"]["dkim_dir"])
    if not os.path.isabs(keydir):
        raise SaltInvocationError(f"DKIM key directory must be an absolute path: {keydir!r}")
    return keydir


def key_path(domain, selector=DEFAULT_SELECTOR, keydir=None):
    """
    Return the path of the private key file of ``domain`` and ``selector``
    (whether it exists or not).

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.key_path example.org
    """
    domain, selector = _check_name(domain, selector)
    return os.path.join(_keydir(keydir), f"{domain}.{selector}.private")


def _ids(user, group):
    """uid/gid to hand the key to, or -1 where the account does not exist."""
    uid = gid = -1
    if user:
        try:
            uid = pwd.getpwnam(user).pw_uid
        except KeyError:
            log.info("chatmail_dkim: user %s does not exist, not changing the key owner", user)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            log.info("chatmail_dkim: group %s does not exist, not changing the key group", group)
    return uid, gid


def _chown(path, uid, gid):
    if uid == -1 and gid == -1:
        return
    try:
        os.chown(path, uid, gid)
    except PermissionError:
        log.warning("chatmail_dkim: not allowed to chown %s to %s:%s", path, uid, gid)


def _public_from_pem(pem):
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.public_key().public_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PublicFormat.SubjectPublicKeyInfo,
    )
    return base64.b64encode(der).decode("ascii")


def _write_new_key(path, bits, uid, gid):
    """Write a new RSA key to ``path`` unless a file appeared there; True when written."""
    directory = os.path.dirname(path)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        _chown(directory, uid, gid)

    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.TraditionalOpenSSL,
        encryption_algorithm=serialization.NoEncryption(),
    )
    # Write a private temporary file, then hard-link it into place: link()
    # fails if the target appeared meanwhile, so a key is never replaced.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, KEY_MODE)
        _chown(tmp, uid, gid)
        try:
            os.link(tmp, path)
            created = True
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            created = False
    finally:
        os.unlink(tmp)
    return created


def generate(
    domain,
    selector=DEFAULT_SELECTOR,
    keydir=None,
    bits=2048,
    user="opendkim",
    group="opendkim",
):
    """
    Create the DKIM private key of ``domain`` for ``selector`` unless it exists.

    The key is written to ``<keydir>/<domain>.<selector>.private`` (PEM RSA,
    mode 0600, owned by ``user``:``group`` when those accounts exist).  An
    existing file is never overwritten, not even when it cannot be read.

    Returns a dict with ``path``, ``created`` (bool) and ``public`` (base64 DER
    SubjectPublicKeyInfo, the DNS ``p=`` value).

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.generate example.org
        salt '*' chatmail_dkim.generate example.org selector=dkim2025 bits=2048
    """
    bits = int(bits)
    if bits < 1024:
        raise SaltInvocationError(f"refusing to create a {bits}-bit DKIM key (at least 1024)")
    path = key_path(domain, selector, keydir)
    if os.path.lexists(path):
        return {"path": path, "created": False, "public": public_key(domain, selector, keydir)}

    try:
        created = _write_new_key(path, bits, *_ids(user, group))
    except OSError as exc:
        raise CommandExecutionError(f"cannot write the DKIM key {path}: {exc}") from None
    return {"path": path, "created": created, "public": public_key(domain, selector, keydir)}


def public_key(domain, selector=DEFAULT_SELECTOR, keydir=None):
    """
    Return the base64 DER public key (the DNS ``p=`` value) of the DKIM key of
    ``domain`` and ``selector``, or None when there is no key.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.public_key example.org
    """
    path = key_path(domain, selector, keydir)
    try:
        with open(path, "rb") as fh:
            pem = fh.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CommandExecutionError(f"cannot read the DKIM key {path}: {exc}") from None
    try:
        return _public_from_pem(pem)
    except (ValueError, TypeError) as exc:
        raise CommandExecutionError(f"cannot read the DKIM key {path}: {exc}") from None


def txt_value(domain, selector=DEFAULT_SELECTOR, keydir=None):
    """
    Return the DKIM TXT record value ``v=DKIM1;k=rsa;p=<key>`` of ``domain``
    and ``selector``, or None when there is no key.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.txt_value example.org
    """
    public = public_key(domain, selector, keydir)
    if public is None:
        return None
    return f"v=DKIM1;k=rsa;p={public}"


def split_txt(value, size=TXT_CHUNK):
    """
    Split a TXT record value into character-strings of at most ``size``
    (255) characters; resolvers join them again without separator.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.split_txt "v=DKIM1;k=rsa;p=..."
    """
    size = int(size)
    if not value:
        return [""]
    return [value[i : i + size] for i in range(0, len(value), size)]


def txt_strings(domain, selector=DEFAULT_SELECTOR, keydir=None):
    """
    Return the DKIM TXT record value as a list of strings of at most 255
    characters each (the form a zone file or DNS API wants), or None when
    there is no key.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.txt_strings example.org
    """
    value = txt_value(domain, selector, keydir)
    if value is None:
        return None
    return split_txt(value)


def selectors(domain, keydir=None):
    """
    List the selectors that have a key for ``domain`` in ``keydir`` (sorted).

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.selectors example.org
    """
    domain, _ = _check_name(domain, DEFAULT_SELECTOR)
    directory = _keydir(keydir)
    prefix, suffix = f"{domain}.", ".private"
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.startswith(prefix) and name.endswith(suffix):
            selector = name[len(prefix) : -len(suffix)]
            try:
                found.append(__utils__["chatmail_util.check_selector"](selector))
            except ValueError:
                continue
    return sorted(found)


def list_keys(keydir=None):
    """
    Return every DKIM key in ``keydir`` as ``{domain: {selector: public}}``
    (base64 public keys only, never private data), e.g. for the salt mine.
    Unreadable or foreign files are skipped.

    CLI Example:

    .. code-block:: bash

        salt '*' chatmail_dkim.list_keys
    """
    directory = _keydir(keydir)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return {}
    found = {}
    for name in names:
        if name.startswith(".") or not name.endswith(".private"):
            continue
        stem = name[: -len(".private")]
        domain, _, selector = stem.rpartition(".")
        if not domain or not selector:
            continue
        try:
            public = public_key(domain, selector, directory)
        except (CommandExecutionError, SaltInvocationError) as exc:
            log.warning("chatmail_dkim: skipping %s: %s", name, exc)
            continue
        if public:
            found.setdefault(domain, {})[selector] = public
    return found
