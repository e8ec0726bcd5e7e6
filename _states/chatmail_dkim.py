"""
Keep the DKIM signing key of a chatmail domain present.

The key is created once and never regenerated: an existing key file is left
alone (only its mode and owner are corrected).  Rotation means a NEW selector:

.. code-block:: yaml

    chatmail-dkim-example.org-key-present:
      chatmail_dkim.key_present:
        - name: example.org
        - selector: dkim2026
        - rotate: true

creates ``example.org.dkim2026.private`` next to the old key, which is kept so
that the old DNS record and signatures stay valid until the operator removes
them.  Without ``rotate: true`` a new selector for a domain that already has a
key is refused, so a typo in the pillar cannot silently replace the key that
DNS publishes.
"""

import grp
import os
import pwd
import stat

from salt.exceptions import SaltInvocationError

__virtualname__ = "chatmail_dkim"

KEY_MODE = 0o600


def __virtual__():
    if "chatmail_dkim.generate" not in __salt__:
        return (False, "chatmail_dkim state: the chatmail_dkim execution module is not loaded")
    return __virtualname__


def _owner_fixes(path, user, group):
    """What needs changing on an existing key: {"mode"|"user"|"group": wanted}."""
    st = os.stat(path)
    fixes = {}
    if stat.S_IMODE(st.st_mode) != KEY_MODE:
        fixes["mode"] = f"{KEY_MODE:04o}"
    if user:
        try:
            if pwd.getpwnam(user).pw_uid != st.st_uid:
                fixes["user"] = user
        except KeyError:
            pass
    if group:
        try:
            if grp.getgrnam(group).gr_gid != st.st_gid:
                fixes["group"] = group
        except KeyError:
            pass
    return fixes


def key_present(
    name,
    selector="opendkim",
    keydir=None,
    bits=2048,
    user="opendkim",
    group="opendkim",
    rotate=False,
):
    """
    Ensure the DKIM private key of domain ``name`` for ``selector`` exists in
    ``keydir`` (``<keydir>/<name>.<selector>.private``, mode 0600, owned by
    ``user``:``group`` when those accounts exist).

    name
        The chatmail domain.
    selector
        DKIM selector (default ``opendkim``).
    keydir
        Key directory (default: pillar ``chatmail:lookup:paths:dkim_dir`` or
        ``/etc/dkimkeys``).
    bits
        RSA key size for a new key (default 2048).
    user, group
        Owner of the key file (skipped when the account does not exist).
    rotate
        Allow creating a key under a new selector when the domain already has
        keys under other selectors.  Existing keys are never replaced.
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        path = __salt__["chatmail_dkim.key_path"](name, selector=selector, keydir=keydir)
    except SaltInvocationError as exc:
        ret["comment"] = str(exc)
        return ret

    if os.path.lexists(path):
        if os.path.islink(path) or not os.path.isfile(path):
            ret["comment"] = f"{path} exists but is not a regular file; refusing to touch it"
            return ret
        fixes = _owner_fixes(path, user, group)
        if not fixes:
            ret["result"] = True
            ret["comment"] = f"DKIM key {path} is present"
            if rotate:
                ret["comment"] += " (rotation needs a new selector; existing keys are kept)"
            return ret
        ret["changes"] = fixes
        if __opts__["test"]:
            ret["result"] = None
            ret["comment"] = f"DKIM key {path} would get " + ", ".join(
                f"{k} {v}" for k, v in sorted(fixes.items())
            )
            return ret
        if "mode" in fixes:
            os.chmod(path, KEY_MODE)
        if "user" in fixes or "group" in fixes:
            uid = pwd.getpwnam(fixes["user"]).pw_uid if "user" in fixes else -1
            gid = grp.getgrnam(fixes["group"]).gr_gid if "group" in fixes else -1
            os.chown(path, uid, gid)
        ret["result"] = True
        ret["comment"] = f"DKIM key {path}: fixed " + ", ".join(sorted(fixes))
        return ret

    others = [s for s in __salt__["chatmail_dkim.selectors"](name, keydir=keydir) if s != selector]
    if others and not rotate:
        ret["comment"] = (
            f"{name} already has DKIM key(s) for selector(s) {', '.join(others)}; "
            f"set rotate: true to add a key under the new selector {selector} "
            "(existing keys are kept)"
        )
        return ret

    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = {"created": path}
        ret["comment"] = f"DKIM key {path} would be created"
        return ret

    created = __salt__["chatmail_dkim.generate"](
        name, selector=selector, keydir=keydir, bits=bits, user=user, group=group
    )
    ret["result"] = True
    if created["created"]:
        ret["changes"] = {"created": created["path"]}
        if others:
            ret["changes"]["kept"] = others
        ret["comment"] = f"DKIM key {created['path']} created"
    else:
        ret["comment"] = f"DKIM key {created['path']} is present"
    return ret
