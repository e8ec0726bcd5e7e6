"""Images: a debootstrapped Debian 12 base and a systemd + salt layer on top.

The systemd image tag is a hash of everything that goes into it (base image id,
build script, wheelhouse contents), so a change rebuilds and an unchanged
input reuses the cached image in dockerd's data root.
"""

import hashlib
import shutil
import subprocess
import sys
import time

from . import CACHE, LABEL, LOG_DIR, NETWORK, PROXY_URL, SALT_VERSION
from .docker import docker, image_exists
from .docker import env as docker_env
from .network import debian_mirror, ensure_network, ensure_proxy

BASE_IMAGE = "chatmail-salt/bookworm-base:latest"
SYSTEMD_REPO = "chatmail-salt/bookworm-systemd"
WHEELHOUSE = CACHE / "host-wheels"
SALT_VENV = "/opt/salt"

IMAGE_PKGS = [
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    "python3-venv",
    "python3-apt",
    "ca-certificates",
    "iproute2",
    "procps",
    "curl",
    "openssl",
]


def log(msg):
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


def ensure_wheelhouse():
    """cp311 wheels of salt and its deps, built with this machine's Python 3.11."""
    stamp = WHEELHOUSE / f".salt-{SALT_VERSION}"
    if stamp.exists():
        return False
    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    log(f"building wheelhouse {WHEELHOUSE} (salt=={SALT_VERSION})")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / "wheelhouse.log", "ab") as out:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "-q",
                "-w",
                str(WHEELHOUSE),
                f"salt=={SALT_VERSION}",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    stamp.touch()
    return True


def ensure_base_image():
    if image_exists(BASE_IMAGE):
        return False
    root = CACHE / "rootfs-build"
    shutil.rmtree(root, ignore_errors=True)
    mirror = debian_mirror()
    log(f"debootstrap --variant=minbase bookworm from {mirror}")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / "debootstrap.log", "ab") as out:
        subprocess.run(
            ["debootstrap", "--variant=minbase", "bookworm", str(root), mirror],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    try:
        subprocess.run(
            ["docker", "import", "-", BASE_IMAGE],
            stdin=tar.stdout,
            env=docker_env(),
            capture_output=True,
            check=True,
        )
    finally:
        tar.stdout.close()
        tar.wait()
    shutil.rmtree(root, ignore_errors=True)
    return True


def build_script():
    gw_proxy = f'Acquire::http::Proxy "{PROXY_URL}";'
    return f"""set -eux
export DEBIAN_FRONTEND=noninteractive
echo '{gw_proxy}' > /etc/apt/apt.conf.d/01cmsalt-proxy
cat > /etc/apt/sources.list <<'SRC'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SRC
apt-get update -q
apt-get install -y -q --no-install-recommends {" ".join(IMAGE_PKGS)}
apt-get clean
python3 -m venv --system-site-packages {SALT_VENV}
{SALT_VENV}/bin/pip install -q --no-index --find-links /wheels salt=={SALT_VERSION}
for b in salt-call salt-minion; do ln -sf {SALT_VENV}/bin/$b /usr/local/bin/$b; done
mkdir -p /etc/salt/minion.d /srv
# per-container machine id, no consoles or udev in a container
: > /etc/machine-id
rm -f /var/lib/dbus/machine-id
systemctl mask getty@tty1.service console-getty.service systemd-udevd.service \
  systemd-udev-trigger.service systemd-remount-fs.service systemd-firstboot.service
"""


def systemd_image_tag():
    h = hashlib.sha256()
    h.update(docker("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.encode())
    h.update(build_script().encode())
    for whl in sorted(p.name for p in WHEELHOUSE.glob("*.whl")):
        h.update(whl.encode())
    return f"{SYSTEMD_REPO}:{h.hexdigest()[:12]}"


def ensure_image():
    """Everything needed to boot a host; returns the systemd image tag."""
    ensure_wheelhouse()
    ensure_base_image()
    tag = systemd_image_tag()
    if image_exists(tag):
        return tag
    ensure_network()
    ensure_proxy()
    name = "cmsalt-build-" + tag.rsplit(":", 1)[1]
    docker("rm", "-f", name, check=False)
    log(f"building {tag}")
    t0 = time.monotonic()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    try:
        with open(LOG_DIR / "image-build.log", "a") as out:
            proc = subprocess.run(
                [
                    "docker",
                    "run",
                    "--name",
                    name,
                    "--label",
                    f"{LABEL}=1",
                    "--network",
                    NETWORK,
                    "-v",
                    f"{WHEELHOUSE}:/wheels:ro",
                    BASE_IMAGE,
                    "bash",
                    "-c",
                    build_script(),
                ],
                env=docker_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"image build failed; see {LOG_DIR / 'image-build.log'}")
        docker(
            "commit",
            "--change",
            'CMD ["/lib/systemd/systemd"]',
            name,
            tag,
        )
    finally:
        docker("rm", "-f", name, check=False)
    log(f"built {tag} in {time.monotonic() - t0:.0f}s")
    prune_old_images(keep=tag)
    return tag


def prune_old_images(keep):
    """Remove superseded systemd images (those still used by a container stay)."""
    listing = docker("images", "--format", "{{.Repository}}:{{.Tag}}", SYSTEMD_REPO, check=False)
    for ref in listing.stdout.split():
        if ref != keep:
            docker("image", "rm", ref, check=False)
