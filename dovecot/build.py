"""Build, cache and publish the relay's patched Dovecot (``./cmsalt build-dovecot``).

    python -m dovecot.build [--lto] [--no-check-newer] [--publish DIR | --no-publish]
                            [--allow-older-source] [--rebuild]

The recipe is ``salt/chatmail/dovecot/recipe/``: ``build-debs.sh`` and
``patches/``.  The script runs in a throwaway container of the harness's
debootstrapped Debian 12 image (``chatmail-salt/bookworm-base``) whose apt goes
through the harness's apt proxy, so this machine gets no -dev packages and the
build environment is plain Debian 12.

Cache (``/var/cache/chatmail-salt/dovecot-debs/``): one directory per build,
``<debian version without epoch>+chatmail1-<recipe id>``, where the recipe id
hashes the patches, the script's SUFFIX and RECIPE lines and the options
(``lto``): a changed patch (or RECIPE bump) builds anew, a new Debian source
version builds anew, anything else reuses.
Each directory holds ``chatmail-dovecot.tar`` (what the dovecot state installs),
the .debs a relay installs, dpkg's .buildinfo and ``build-info`` (versions, wall and CPU
seconds).  ``current`` names the newest build of the current recipe.

Publishing copies (hard-links) ``chatmail-dovecot.tar`` with its ``.sha256`` and
``VERSION`` into ``<tree>/salt/chatmail-dovecot/`` (git-ignored), which every
file server of this state tree serves as ``salt://chatmail-dovecot/`` -- the
pillar default ``chatmail:dovecot:archive``.

The command asks the Debian archive for the newest ``dovecot`` source first
(``--no-check-newer``: use a cached build if there is one); the test harness
(``ensure()``) reuses any cached build of the current recipe and builds only
when there is none.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "salt" / "chatmail" / "dovecot" / "recipe"
CACHE = Path(os.environ.get("CHATMAIL_CACHE", "/var/cache/chatmail-salt"))
CACHE_DIR = CACHE / "dovecot-debs"
ARCHIVE = "chatmail-dovecot.tar"
PUBLISH_SUBDIR = Path("salt") / "chatmail-dovecot"
CONTAINER_LABEL = "chatmail-salt.dovecot-build"
PROXY = "http://172.31.76.1:3142"  # tests.harness.PROXY_URL
SOURCES = """\
deb http://deb.debian.org/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb-src http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
deb-src http://deb.debian.org/debian-security bookworm-security main
"""


def log(msg):
    print(f"[build-dovecot] {msg}", file=sys.stderr, flush=True)


def recipe_id(lto=False):
    """12 hex digits over what decides the build's output: the patches (names
    and contents), the script's SUFFIX and RECIPE lines and the options.  A
    comment or refactoring of build-debs.sh reuses the cache; a change that
    alters the output bumps RECIPE there."""
    h = hashlib.sha256()
    for path in sorted((RECIPE / "patches").glob("*.patch")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    script = (RECIPE / "build-debs.sh").read_text().splitlines()
    for line in script:
        if line.startswith(("SUFFIX=", "RECIPE=")):
            h.update(line.encode() + b"\n")
    h.update(f"lto={int(bool(lto))}".encode())
    return h.hexdigest()[:12]


def recipe_number():
    """RECIPE of build-debs.sh: the N of the package version's +chatmail<N>."""
    for line in (RECIPE / "build-debs.sh").read_text().splitlines():
        if line.startswith("RECIPE="):
            return int(line.split("=", 1)[1])
    raise ValueError("build-debs.sh has no RECIPE= line")


def read_info(build_dir):
    info = {}
    try:
        text = (Path(build_dir) / "build-info").read_text()
    except OSError:
        return info
    for line in text.splitlines():
        key, sep, value = line.partition(": ")
        if sep:
            info[key.strip()] = value.strip()
    return info


def version_gt(a, b):
    """dpkg's order: is version a newer than b?"""
    if shutil.which("dpkg") is None:  # pragma: no cover - Debian only
        return a > b
    return subprocess.run(["dpkg", "--compare-versions", a, "gt", b]).returncode == 0


def newest_first(versions):
    out = []
    for v in versions:
        i = len(out)
        while i > 0 and version_gt(v, out[i - 1]):
            i -= 1
        out.insert(i, v)
    return out


def cached_builds(lto=False):
    """{source version: build dir} of complete builds of the current recipe."""
    rid = recipe_id(lto)
    found = {}
    if not CACHE_DIR.is_dir():
        return found
    for d in CACHE_DIR.iterdir():
        if d.is_dir() and d.name.endswith("-" + rid) and (d / ARCHIVE).is_file():
            info = read_info(d)
            if info.get("source"):
                found[info["source"]] = d
    return found


def newest_cached(lto=False):
    builds = cached_builds(lto)
    if not builds:
        return None
    return builds[newest_first(list(builds))[0]]


class _Lock:
    """One build at a time on this machine (two test sessions may ask at once)."""

    def __enter__(self):
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        self._fd = open(CACHE_DIR / ".lock", "a")
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self._fd.close()
        return False


# --- the container -------------------------------------------------------------------


def _infra():
    """dockerd, the apt proxy and the base image of the test harness."""
    from tests.harness import docker, ensure_service_ip, image, locked, network

    with locked():
        docker.ensure()
        ensure_service_ip()
        network.ensure_proxy()
        image.ensure_base_image()
    return docker, image.BASE_IMAGE


class BuildContainer:
    """A Debian 12 container with apt through the proxy and deb-src lines, the
    recipe mounted read-only at /recipe and `out` at /out."""

    def __init__(self, out):
        self.docker, self.image = _infra()
        self.name = f"cmsalt-dovecot-build-{os.getpid()}"
        self.out = Path(out)

    def __enter__(self):
        d = self.docker.docker
        d("rm", "-f", self.name, check=False)
        d(
            "run", "-d", "--name", self.name, "--label", f"{CONTAINER_LABEL}=1",
            "-v", f"{RECIPE}:/recipe:ro", "-v", f"{self.out}:/out",
            self.image, "sleep", "infinity",
        )  # fmt: skip
        self.sh(
            f"echo 'Acquire::http::Proxy \"{PROXY}\";' > /etc/apt/apt.conf.d/01cmsalt-proxy"
            f" && printf '%s' '{SOURCES}' > /etc/apt/sources.list"
        )
        return self

    def sh(self, script, check=True, log_to=None):
        argv = ["exec", "-e", "BUILD_DIR=/build", self.name, "bash", "-c", script]
        if log_to is None:
            proc = self.docker.docker(*argv, check=False)
        else:
            with open(log_to, "a") as out:
                proc = subprocess.run(
                    ["docker", *argv],
                    env=self.docker.env(),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
        if check and proc.returncode != 0:
            where = f"; see {log_to}" if log_to else f":\n{proc.stdout}\n{proc.stderr}"
            raise RuntimeError(f"{script.split()[0]} failed in {self.name}{where}")
        return proc

    def cpu_seconds(self):
        """CPU seconds the container used so far (cgroup v1 cpuacct of dockerd's
        cgroupfs driver; v2 cpu.stat), or None where neither is found."""
        cid = self.docker.docker("inspect", "-f", "{{.Id}}", self.name, check=False)
        cid = cid.stdout.strip()
        for path, scale in (
            (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage", 1e-9),
            (f"/sys/fs/cgroup/system.slice/docker-{cid}.scope/cpu.stat", 1e-6),
            (f"/sys/fs/cgroup/docker/{cid}/cpu.stat", 1e-6),
        ):
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if "usage_usec" in text:
                text = text.split("usage_usec", 1)[1].split()[0]
            return float(text.split()[0]) * scale
        return None

    def __exit__(self, *exc):
        self.docker.docker("rm", "-f", self.name, check=False, timeout=120)
        return False


def query(container):
    """(newest source version apt knows, newest one whose files can be fetched)."""
    proc = container.sh("/recipe/build-debs.sh --query")
    found = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return found["newest"], found["fetchable"]


def build(lto=False, check_newer=True, allow_older=False, rebuild=False):
    """The build dir of the newest buildable source for the current recipe
    (built now unless cached).  Returns (build dir, built now?)."""
    rid = recipe_id(lto)
    reuse = not check_newer and not rebuild
    # A finished build is moved into place whole, so a cached one is taken
    # without the lock: a session must not wait out another tree's build of
    # a different recipe (seen: every host session of the machine stalled
    # for a helper's rebuild).  Asked again under the lock: the build we
    # waited for may be the one we need.
    if reuse and (cached := newest_cached(lto)):
        return cached, False
    with _Lock():
        if reuse and (cached := newest_cached(lto)):
            return cached, False
        tmp = CACHE_DIR / f".tmp-{rid}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        logfile = CACHE / "logs" / "dovecot-build.log"
        logfile.parent.mkdir(parents=True, exist_ok=True)
        try:
            t0 = time.monotonic()
            with BuildContainer(tmp) as box:
                newest, fetchable = query(box)
                log(f"newest dovecot source: {newest}; fetchable: {fetchable}")
                if fetchable != newest:
                    msg = (
                        f"the newest dovecot source {newest} cannot be fetched from this"
                        f" machine's Debian mirror; {fetchable} is the newest that can"
                    )
                    if not allow_older:
                        raise SystemExit(
                            f"{msg}. Refusing to build a Dovecot older than Debian's"
                            " (pass --allow-older-source to build it anyway)."
                        )
                    log(f"WARNING: {msg}: building that one, which lacks Debian's newer fixes")
                cached = cached_builds(lto).get(fetchable)
                if cached and not rebuild:
                    log(f"cached: {cached}")
                    return cached, False
                _refuse_same_version(f"{fetchable}+chatmail{recipe_number()}", rid, lto)
                version = f"{fetchable}+chatmail{recipe_number()}"
                log(f"building {version} (lto={int(lto)}); log: {logfile}")
                args = f"/out --version '{fetchable}'" + (" --lto" if lto else "")
                if fetchable != newest:
                    args += " --allow-older-source"
                box.sh(f"/recipe/build-debs.sh {args}", log_to=logfile)
                cpu = box.cpu_seconds()
            wall = time.monotonic() - t0
            with open(tmp / "build-info", "a") as info:
                info.write(f"container_wall_seconds: {wall:.0f}\n")
                if cpu is not None:
                    # the whole container: source query, build-dep install, build
                    info.write(f"container_cpu_seconds: {cpu:.0f}\n")
            info = read_info(tmp)
            final = CACHE_DIR / f"{info['version'].split(':', 1)[-1]}-{rid}"
            if final.exists():
                shutil.rmtree(final)
            tmp.rename(final)
            log(
                f"built {info['version']} in {wall / 60:.1f} min (build {info['wall_seconds']} s"
                f" wall, {info['cpu_user_seconds']} s user + {info['cpu_sys_seconds']} s system"
                f" CPU): {final}"
            )
            return final, True
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            _set_current(lto)


def _refuse_same_version(version, rid, lto=False):
    """Two different builds must not share a version: a relay that has one
    would never install the other.  A build of another recipe (with the same
    options) with this version means the patches changed without a RECIPE
    bump."""
    if not CACHE_DIR.is_dir():
        return
    for d in CACHE_DIR.iterdir():
        if not d.is_dir() or d.name.endswith("-" + rid):
            continue
        info = read_info(d)
        if info.get("version") == version and info.get("lto", "0") == str(int(bool(lto))):
            raise SystemExit(
                f"{d} is another build with version {version}: the patches or the"
                " recipe changed without bumping RECIPE in build-debs.sh"
            )


def _set_current(lto):
    cur = newest_cached(lto)
    link = CACHE_DIR / "current"
    if cur is None:
        return
    tmp_link = CACHE_DIR / f".current-{os.getpid()}"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(cur.name)
    tmp_link.replace(link)


def publish(build_dir, dest):
    """Put the build's archive into `dest` (a directory a file server serves as
    salt://chatmail-dovecot/): chatmail-dovecot.tar, .sha256, VERSION.
    Returns the archive's sha256."""
    build_dir, dest = Path(build_dir), Path(dest)
    info = read_info(build_dir)
    sha = info.get("archive_sha256")
    if not sha:
        sha = hashlib.sha256((build_dir / ARCHIVE).read_bytes()).hexdigest()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / ARCHIVE
    sums = dest / f"{ARCHIVE}.sha256"
    if target.exists() and sums.exists() and sums.read_text().split()[:1] == [sha]:
        return sha
    tmp = dest / f".{ARCHIVE}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    try:
        os.link(build_dir / ARCHIVE, tmp)
    except OSError:
        shutil.copyfile(build_dir / ARCHIVE, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(target)
    sums.write_text(f"{sha}  {ARCHIVE}\n")
    (dest / "VERSION").write_text(info.get("version", "") + "\n")
    return sha


def ensure(tree, lto=False):
    """For the test harness and ./cmsalt up: a cached build of the current
    recipe (built first if there is none; an older source than Debian's newest
    is accepted with a warning, as test relays are throwaway) published into
    `tree`/salt/chatmail-dovecot.  Returns the build dir."""
    build_dir, _built = build(lto=lto, check_newer=False, allow_older=True)
    publish(build_dir, Path(tree) / PUBLISH_SUBDIR)
    return build_dir


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lto", action="store_true", help="keep Debian's LTO (about 2x CPU)")
    parser.add_argument(
        "--no-check-newer",
        action="store_true",
        help="use a cached build without asking the archive for a newer source",
    )
    parser.add_argument(
        "--allow-older-source",
        action="store_true",
        help="build the newest source that can be fetched even if Debian has a newer one",
    )
    parser.add_argument("--rebuild", action="store_true", help="build even if cached")
    parser.add_argument(
        "--publish",
        metavar="DIR",
        default=str(ROOT / PUBLISH_SUBDIR),
        help="where to put chatmail-dovecot.tar (default: salt/chatmail-dovecot of this tree)",
    )
    parser.add_argument("--no-publish", action="store_true")
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="what the test harness does: reuse any cached build of this recipe, build"
        " (accepting an older source) only when there is none, publish into this tree",
    )
    args = parser.parse_args(argv)
    # SIGTERM/SIGHUP end the build like Ctrl-C: the container is removed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # nohup: leave it
        signal.signal(signal.SIGHUP, signal.default_int_handler)
    if args.if_missing:
        try:
            print(ensure(ROOT, lto=args.lto))
        finally:
            _release()
        return 0
    try:
        build_dir, built = build(
            lto=args.lto,
            check_newer=not args.no_check_newer,
            allow_older=args.allow_older_source,
            rebuild=args.rebuild,
        )
    finally:
        _release()
    info = read_info(build_dir)
    print(f"build     : {build_dir}{'' if built else ' (cached)'}")
    print(f"version   : {info.get('version')}")
    if info.get("newest_source") and info.get("newest_source") != info.get("source"):
        print(f"WARNING   : Debian's newest dovecot source is {info['newest_source']}")
    if not args.no_publish:
        sha = publish(build_dir, args.publish)
        print(f"published : {Path(args.publish) / ARCHIVE}")
        print(f"sha256    : {sha}")
    return 0


def _release():
    """Stop dockerd and the apt proxy if this command started them and no test
    session or kept host needs them (the harness's own rule)."""
    harness = sys.modules.get("tests.harness")
    if harness is not None:
        harness.release()


if __name__ == "__main__":
    sys.exit(main())
