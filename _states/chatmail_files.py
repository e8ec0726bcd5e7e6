"""
Stale entries of a directory this tree manages, removed when the state runs.

A domain deleted from the pillar leaves files named after it (its zone
fragment, nginx vhost, web directory, certificate directory, acmetool
desired file).  Listing the directory while the SLS is rendered would see
the directory as it was *before* the run, so an entry created during the run
needs a second run to go; this state lists the directory when it executes,
after everything it requires, and removes what the pillar no longer names.

.. code-block:: yaml

    chatmail-dns-stale-zone-fragments-pruned:
      chatmail_files.pruned:
        - name: /etc/chatmail/zones
        - match: '*.zone'
        - keep: [chat.example.org.zone]
"""

import fnmatch
import os
import re
import shutil

__virtualname__ = "chatmail_files"

KINDS = ("any", "file", "dir")


def __virtual__():
    return __virtualname__


def _kind_of(path):
    if os.path.islink(path):
        return "link"
    if os.path.isdir(path):
        return "dir"
    return "file"


def _contains(path, pattern):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return re.search(pattern, f.read(1 << 20)) is not None
    except OSError:
        return False


def stale_entries(name, keep=(), match="*", kind="any", containing=None):
    """The names in directory ``name`` that ``pruned`` would remove."""
    if not os.path.isdir(name) or os.path.islink(name):
        return []
    stale = []
    for entry in sorted(os.listdir(name)):
        path = os.path.join(name, entry)
        if entry in keep or not fnmatch.fnmatchcase(entry, match):
            continue
        found = _kind_of(path)
        if kind != "any" and found != kind:
            continue  # a symlink is neither a file nor a dir of ours
        if containing is not None and (found != "file" or not _contains(path, containing)):
            continue
        stale.append(entry)
    return stale


def pruned(name, keep=None, match="*", kind="any", containing=None):
    """
    Remove the entries of directory ``name`` that match the shell pattern
    ``match`` and are not listed in ``keep``.

    kind
        ``file``, ``dir`` (real ones, never symlinks) or ``any`` (also
        symlinks, which are removed themselves, never followed).
    containing
        only files whose text matches this regular expression (e.g. a
        "Managed by Salt" marker), so files written by others stay.

    A missing directory is fine (nothing to remove).  ``test=True`` reports
    what would go.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if kind not in KINDS:
        ret["result"] = False
        ret["comment"] = f"kind must be one of {', '.join(KINDS)}, not {kind!r}"
        return ret
    keep = list(keep or [])
    stale = stale_entries(name, keep, match, kind, containing)
    if not stale:
        ret["comment"] = f"no stale entries in {name}"
        return ret
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = {"removed": stale}
        ret["comment"] = f"would remove from {name}: {', '.join(stale)}"
        return ret
    removed, errors = [], []
    for entry in stale:
        path = os.path.join(name, entry)
        try:
            if _kind_of(path) == "dir":
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(entry)
        except OSError as exc:
            errors.append(f"{entry}: {exc}")
    if removed:
        ret["changes"] = {"removed": removed}
    if errors:
        ret["result"] = False
        ret["comment"] = f"could not remove from {name}: " + "; ".join(errors)
    else:
        ret["comment"] = f"removed from {name}: {', '.join(removed)}"
    return ret
