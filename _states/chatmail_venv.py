"""
A Python package installed from a source tree into its own virtualenv, and
reinstalled exactly when the source changed (``installed``); or a venv of
pinned distributions from an index or a wheelhouse (``requirements``).

chatmaild reaches the minion as a source tree (``salt://chatmaild``, copied by
``file.recurse``); this state makes the venv if it is missing and installs
the tree with pip when its content hash differs from the one recorded at the
last install.  Salt's ``pip.installed`` cannot tell that a local source
directory changed, and ``virtualenv.managed`` needs the virtualenv tool;
this state needs only ``python3 -m venv`` and pip.

.. code-block:: yaml

    chatmail-chatmaild-venv-installed:
      chatmail_venv.installed:
        - name: /usr/local/lib/chatmaild
        - source: /usr/local/src/chatmaild
        - pip_args: --no-index --find-links=/wheels
"""

import hashlib
import os
import shlex
import shutil
import tempfile

__virtualname__ = "chatmail_venv"

HASH_FILE = ".installed-src.sha256"


def __virtual__():
    return __virtualname__


def source_hash(source):
    """SHA-256 over the paths and contents of ``pyproject.toml`` and ``src/``
    of ``source`` (byte code excluded), in a stable order."""
    digest = hashlib.sha256()
    files = []
    if os.path.isfile(os.path.join(source, "pyproject.toml")):
        files.append("pyproject.toml")
    for root, dirs, names in os.walk(os.path.join(source, "src")):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in names:
            if not name.endswith(".pyc"):
                files.append(os.path.relpath(os.path.join(root, name), source))
    for rel in sorted(files):
        digest.update(rel.encode() + b"\0")
        with open(os.path.join(source, rel), "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def _run(argv):
    return __salt__["cmd.run_all"](argv, python_shell=False)


def installed(name, source, python="/usr/bin/python3", system_site_packages=True, pip_args=""):
    """
    Ensure the virtualenv ``name`` holds the package in ``source``.

    name
        the venv directory (made with ``python -m venv`` when missing)
    source
        the package's source tree (pyproject.toml + src/)
    system_site_packages
        let the venv see the distribution's packages (e.g. Debian's
        python3-aiosmtpd), so pip installs nothing else (``--no-deps``)
    pip_args
        more pip arguments (e.g. ``--find-links=/wheels``); pip never
        downloads (``--no-index --no-deps``, build without isolation)

    The install runs from a scratch copy, so the source tree stays exactly as
    Salt put it.
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    if not os.path.isfile(os.path.join(source, "pyproject.toml")):
        ret["result"] = False
        ret["comment"] = f"no package source at {source} (pyproject.toml missing)"
        return ret
    want = source_hash(source)
    venv_python = os.path.join(name, "bin", "python")
    record = os.path.join(name, HASH_FILE)
    have = None
    if os.path.isfile(record):
        with open(record) as f:
            have = f.read().strip()
    need_venv = not os.path.exists(venv_python)
    if not need_venv and have == want:
        ret["comment"] = f"{source} is installed in {name}"
        return ret
    changes = {"installed": want}
    if need_venv:
        changes["venv"] = name
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"] = changes
        ret["comment"] = f"would install {source} into {name}"
        return ret
    if need_venv:
        argv = [python, "-m", "venv"] + (["--system-site-packages"] if system_site_packages else [])
        res = _run(argv + [name])
        if res["retcode"] != 0:
            ret["result"] = False
            ret["comment"] = f"venv {name} failed: {res['stderr'] or res['stdout']}"
            return ret
    scratch = tempfile.mkdtemp(prefix="chatmail-venv-")
    try:
        copy = os.path.join(scratch, "src")
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        argv = [
            *(venv_python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"),
            *("--no-build-isolation", "--force-reinstall", *shlex.split(pip_args or ""), copy),
        ]
        res = _run(argv)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if res["retcode"] != 0:
        ret["result"] = False
        ret["comment"] = f"pip install of {source} failed: {res['stderr'] or res['stdout']}"
        return ret
    with open(record, "w") as f:
        f.write(want + "\n")
    ret["changes"] = changes
    ret["comment"] = f"installed {source} into {name}"
    return ret


REQUIREMENTS_FILE = ".installed-requirements"


def requirements(name, pkgs, python="/usr/bin/python3", pip_args=""):
    """
    Ensure the virtualenv ``name`` (no system site packages) holds exactly
    the pinned distributions ``pkgs`` (e.g. ``deltachat-rpc-server==2.65.0``),
    installed by pip from its index or from what ``pip_args`` names (e.g.
    ``--no-index --find-links=/wheels``).

    pip runs only when the list differs from the one recorded at the last
    successful install or the venv is missing; a changed list rebuilds the
    venv from scratch, so nothing of an older list stays behind (a service
    running from it is restarted by a ``watch``).

    .. code-block:: yaml

        chatmail-echobot-venv-requirements:
          chatmail_venv.requirements:
            - name: /usr/local/lib/chatmail-echobot/venv
            - pkgs:
              - deltachat-rpc-client==2.65.0
              - deltachat-rpc-server==2.65.0
    """
    ret = {"name": name, "result": True, "changes": {}, "comment": ""}
    bad = [p for p in pkgs or [] if "==" not in str(p)]
    if not pkgs or bad:
        ret["result"] = False
        ret["comment"] = f"pkgs must be pinned name==version requirements: {bad or pkgs!r}"
        return ret
    want = "\n".join(sorted(str(p) for p in pkgs)) + "\n"
    venv_python = os.path.join(name, "bin", "python")
    record = os.path.join(name, REQUIREMENTS_FILE)
    have = None
    if os.path.isfile(record) and os.path.exists(venv_python):
        with open(record) as f:
            have = f.read()
    if have == want:
        ret["comment"] = f"{name} holds {', '.join(sorted(pkgs))}"
        return ret
    ret["changes"] = {"installed": sorted(str(p) for p in pkgs)}
    if have is not None:
        ret["changes"]["replaced"] = have.split()
    if __opts__["test"]:
        ret["result"] = None
        ret["comment"] = f"would install {', '.join(sorted(pkgs))} into {name}"
        return ret
    # built where it runs (a venv cannot be moved: its scripts name their
    # interpreter by path); the record is written last, so a failed
    # install is retried by the next run
    shutil.rmtree(name, ignore_errors=True)
    res = _run([python, "-m", "venv", name])
    if res["retcode"] == 0:
        res = _run(
            [
                *(venv_python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"),
                *shlex.split(pip_args or ""),
                *sorted(str(p) for p in pkgs),
            ]
        )
    if res["retcode"] != 0:
        ret["changes"] = {}
        ret["result"] = False
        ret["comment"] = f"pip install into {name} failed: {res['stderr'] or res['stdout']}"
        return ret
    with open(record, "w") as f:
        f.write(want)
    ret["comment"] = f"installed {', '.join(sorted(pkgs))} into {name}"
    return ret
