"""
DNS of chatmail domains: keep a zone-file fragment on the minion and gate a
highstate on the live DNS check.

.. code-block:: yaml

    chatmail-dns-example.org-zone-fragment-managed:
      chatmail_dns.zone_fragment_managed:
        - name: /etc/chatmail/zones/example.org.zone
        - domain: example.org

    chatmail-dns-example.org-records-checked:
      chatmail_dns.records_checked:
        - name: example.org
        - on_failure: warn
"""

import difflib
import os
import tempfile

from salt.exceptions import CommandExecutionError, SaltInvocationError

__virtualname__ = "chatmail_dns"


def __virtual__():
    if "chatmail_dns.records" not in __salt__:
        return (False, "chatmail_dns state: the chatmail_dns execution module is not loaded")
    return __virtualname__


def _record_args(kwargs):
    return {k: v for k, v in kwargs.items() if not k.startswith("__")}


def records_checked(name, on_failure="warn", nameservers=None, **kwargs):
    """
    Check the live DNS records of domain ``name`` against what it needs
    (``chatmail_dns.check``).  Never changes anything.

    name
        The chatmail domain.
    on_failure
        ``fail``: the state fails when a required record is missing or wrong;
        ``warn``: the state succeeds and lists the problems in its comment;
        ``off``: the check is skipped.
    nameservers
        List of ``ip`` or ``ip:port`` to ask instead of the domain's
        authoritative servers.

    Further keyword arguments are passed to ``chatmail_dns.records``
    (``ipv4``, ``ipv6``, ``selector``, ``keydir``, ``tlsrpt``, ``caa``,
    ``acme_account_uri``, ``mx``, ``max_age``) and ``chatmail_dns.check``
    (``resolvers``, ``port``, ``timeout``).
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if on_failure not in ("warn", "fail", "off"):
        ret["result"] = False
        ret["comment"] = f"on_failure must be warn, fail or off, not {on_failure!r}"
        return ret
    if on_failure == "off":
        ret["comment"] = f"DNS check of {name} is turned off"
        return ret
    try:
        report = __salt__["chatmail_dns.check"](
            name, nameservers=nameservers, **_record_args(kwargs)
        )
    except Exception as exc:  # any lookup failure is reported, not raised
        ret["comment"] = f"DNS check of {name} could not run: {exc}"
        ret["result"] = on_failure != "fail"
        return ret
    if report.get("skipped"):
        ret["comment"] = f"DNS check of {name} skipped: {report['skipped']}"
        return ret
    lines = []
    if report["problems"]:
        lines.append(f"DNS of {name} has problems:")
        lines += [f"  {p}" for p in report["problems"]]
    else:
        lines.append(f"DNS of {name}: all required records are present")
    if report["warnings"]:
        lines.append("recommended records:")
        lines += [f"  {w}" for w in report["warnings"]]
    ret["comment"] = "\n".join(lines)
    if report["problems"] and on_failure == "fail":
        ret["result"] = False
    return ret


def zone_fragment_managed(name, domain, mode="0644", makedirs=True, **kwargs):
    """
    Keep the zone-file fragment of ``domain`` (``chatmail_dns.zone_fragment``)
    in the file ``name``.  The file is rewritten atomically, only when its
    content differs.

    name
        Path of the fragment file.
    domain
        The chatmail domain.
    mode
        File mode (default ``0644``: the fragment holds only public data).
    makedirs
        Create missing parent directories.

    Further keyword arguments are passed to ``chatmail_dns.records``.
    """
    ret = {"name": name, "result": False, "changes": {}, "comment": ""}
    try:
        text = __salt__["chatmail_dns.zone_fragment"](domain, **_record_args(kwargs))
    except (SaltInvocationError, CommandExecutionError, KeyError) as exc:
        ret["comment"] = f"cannot build the zone fragment of {domain}: {exc}"
        return ret
    mode = int(str(mode), 8)
    try:
        with open(name, encoding="utf-8") as fh:
            current = fh.read()
        current_mode = os.stat(name).st_mode & 0o7777
    except FileNotFoundError:
        current = None
        current_mode = None

    changes = {}
    if current is None:
        changes["new"] = f"zone fragment of {domain}"
    elif current != text:
        changes["diff"] = "".join(
            difflib.unified_diff(current.splitlines(True), text.splitlines(True), "current", "new")
        )
    if current_mode is not None and current_mode != mode:
        changes["mode"] = f"{mode:04o}"
    if not changes:
        ret["result"] = True
        ret["comment"] = f"zone fragment {name} is up to date"
        return ret
    ret["changes"] = changes
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"zone fragment {name} would be updated"
        return ret

    directory = os.path.dirname(os.path.abspath(name))
    if not os.path.isdir(directory):
        if not makedirs:
            ret["comment"] = f"directory {directory} does not exist"
            return ret
        os.makedirs(directory, mode=0o755, exist_ok=True)
    if current != text:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".zone-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, name)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    else:
        os.chmod(name, mode)
    ret["result"] = True
    ret["comment"] = f"zone fragment {name} written"
    return ret
