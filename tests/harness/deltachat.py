"""The real Delta Chat core (deltachat-rpc-server from PyPI) in a test host.

The acceptance suite, the DCACCOUNT host test and the e2e benchmark run the
core in a bare host on the test network, so it resolves the test domains
through the slot's nsd and reaches the relays as a phone would.
"""

import contextlib
from pathlib import Path

from .docker import docker, env

RPC_SERVER = "/usr/local/bin/deltachat-rpc-server"


def install_rpc_server(host):
    """Copy the rpc server binary of the installed wheel into `host`."""
    import deltachat_rpc_server

    binary = Path(deltachat_rpc_server.__file__).parent / "deltachat-rpc-server"
    docker("cp", str(binary), f"{host.name}:{RPC_SERVER}")


@contextlib.contextmanager
def client_host(name, fqdn, keep=False, reuse=False):
    """A bare test host with the rpc server installed (destroyed afterwards
    unless `keep`)."""
    from . import hosts

    host = hosts.boot(name, fqdn, ip="auto", keep=keep, reuse=reuse)
    try:
        install_rpc_server(host)
        yield host
    finally:
        if not keep:
            hosts.destroy(host)


@contextlib.contextmanager
def core(host, log_path, accounts_dir, extra_env=None):
    """A started ``deltachat_rpc_client.DeltaChat`` whose core runs in `host`
    with a fresh accounts dir (removed again afterwards); its stderr goes to
    `log_path`.  extra_env: more environment variables for the core."""
    from deltachat_rpc_client import DeltaChat, Rpc

    variables = {"DC_ACCOUNTS_PATH": accounts_dir, "RUST_LOG": "info", **(extra_env or {})}
    argv = ["docker", "exec", "-i"]
    for name, value in variables.items():
        argv += ["-e", f"{name}={value}"]
    argv += [host.name, RPC_SERVER]
    with open(log_path, "wb") as log:
        rpc = Rpc(rpc_server_path=argv, env=env(), stderr=log)
        rpc.start()
        try:
            yield DeltaChat(rpc)
        finally:
            rpc.close()
            host.exec("rm", "-rf", accounts_dir, check=False)


def module_fixtures(name, fqdn, keep=False, reuse=False):
    """The pytest fixtures ``client`` (a client host per module, booted after
    the module's ``relay``) and ``dc`` (a fresh core per test in it), for a
    host test module to bind: ``client, dc = deltachat.module_fixtures(...)``."""
    import pytest

    @pytest.fixture(scope="module")
    def client(relay):
        with client_host(name, fqdn, keep, reuse) as host:
            yield host

    @pytest.fixture
    def dc(client, tmp_path):
        log, accounts = tmp_path / "rpc-server.log", f"/root/dc-{tmp_path.name}"
        with core(client, log, accounts) as dc:
            yield dc

    return client, dc
