"""Benchmark doveauth: first logins (account creation) and repeat logins per
second with 100 parallel dict clients, plus the cost of one SHA512-CRYPT hash.

    python bench/bench_doveauth.py [--logins 2000] [--clients 100]

Starts the real ``doveauth`` console script on a temp socket with a temp
mailbox tree, speaks Dovecot 2.3's dict protocol to it, prints a markdown
table and removes everything again.  Every phase is bounded in count and in
time (30 s), so the whole run stays well under two minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import percentile  # noqa: E402

PHASE_TIMEOUT = 30.0
DOMAIN = "bench.example.org"


def dict_connect(path: str) -> tuple[socket.socket, object]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(PHASE_TIMEOUT)
    s.connect(path)
    s.sendall(b"H3\t2\t0\t\tauth\n")
    return s, s.makefile("rb")


def passdb_line(addr: str, password: str) -> bytes:
    return f'Lshared/passdb/{password}"{addr}\t{addr}\n'.encode()


def run_phase(path: str, accounts: list[tuple[str, str]], clients: int):
    """Log every account in once, spread over ``clients`` connections.
    Returns (ok, failed, seconds, latencies)."""
    chunks = [accounts[i::clients] for i in range(clients)]
    conns = [dict_connect(path) for _ in range(clients)]
    latencies: list[float] = []
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()
    start_gate = threading.Barrier(clients + 1)
    deadline = [0.0]

    def worker(conn, chunk):
        sock, rfile = conn
        mine = []
        ok = failed = 0
        start_gate.wait()
        for addr, password in chunk:
            if time.monotonic() > deadline[0]:
                break
            t0 = time.perf_counter()
            sock.sendall(passdb_line(addr, password))
            reply = rfile.readline()
            mine.append(time.perf_counter() - t0)
            if reply.startswith(b"O"):
                ok += 1
            else:
                failed += 1
        with lock:
            latencies.extend(mine)
            counts["ok"] += ok
            counts["failed"] += failed

    pairs = zip(conns, chunks, strict=True)
    threads = [threading.Thread(target=worker, args=pair) for pair in pairs]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + PHASE_TIMEOUT
    t0 = time.perf_counter()
    start_gate.wait()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - t0
    for sock, rfile in conns:
        rfile.close()
        sock.close()
    return counts["ok"], counts["failed"], seconds, latencies


def hash_costs(n: int = 200, repeats: int = 3) -> list[tuple[str, float, float]]:
    """(implementation, ms per hash single-threaded, hashes/s with 2 threads),
    best of ``repeats`` rounds each, alternating the implementations so that
    other load on the machine hits both alike."""
    from chatmaild import user as usermod

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt

    salt = "0123456789abcdef"
    impls = [("crypt module (holds the GIL)", lambda pw: crypt.crypt(pw, "$6$" + salt))]
    if usermod._crypt_r is not None:
        impls.append(
            (
                "libcrypt crypt_r via ctypes (releases the GIL)",
                lambda pw: usermod.sha512_crypt(pw, salt),
            )
        )
    best = {name: [float("inf"), 0.0] for name, _ in impls}
    for _ in range(repeats):
        for name, func in impls:
            t0 = time.perf_counter()
            for _ in range(n):
                func("benchmark-password")
            best[name][0] = min(best[name][0], (time.perf_counter() - t0) / n)

            def loop(func=func):
                for _ in range(n // 2):
                    func("benchmark-password")

            threads = [threading.Thread(target=loop) for _ in range(2)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            best[name][1] = max(best[name][1], (n // 2 * 2) / (time.perf_counter() - t0))
    return [(name, best[name][0] * 1000, best[name][1]) for name, _ in impls]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--logins", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=100)
    args = ap.parse_args(argv)

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    script = Path(sys.executable).parent / "doveauth"
    if not script.exists():
        script = Path(shutil.which("doveauth") or "doveauth")
    base = Path(tempfile.mkdtemp(prefix="bench-doveauth-"))
    sock = str(base / "auth.socket")
    ini = base / "chatmail.ini"
    ini.write_text(
        "[params]\n"
        f"mail_domain = {DOMAIN}\n"
        f"mailboxes_dir = {base / 'mailboxes'}\n"
        f"nocreate_file = {base / 'nocreate'}\n"
        f"state_dir = {base}\n"
        "max_load_1m = 100000\n"
        "min_available_memory = 0\n"
        "min_free_disk_space = 0\n"
    )
    log = open(base / "doveauth.log", "wb")
    proc = subprocess.Popen(
        [str(script), sock, str(ini)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                print("doveauth did not start:", (base / "doveauth.log").read_text())
                return 1
            time.sleep(0.05)

        accounts = [(f"b{i:08d}@{DOMAIN}", f"password-{i:06d}") for i in range(args.logins)]
        phases = []
        for name, accts in [
            ("first login (creates account)", accounts),
            ("repeat login (existing account)", accounts),
            ("refused (localpart too short)", [(f"s{i}@{DOMAIN}", "x" * 12) for i in range(2000)]),
        ]:
            ok, failed, seconds, lat = run_phase(sock, accts, args.clients)
            phases.append((name, ok, failed, seconds, lat))
        hashes = hash_costs()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)

    print(f"{args.clients} parallel dict connections, {args.logins} accounts, one doveauth process")
    print(f"1/5/15-minute load before the run: {load_before}")
    print()
    print("| phase | answered O | answered N/F | seconds | per second | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, ok, failed, seconds, lat in phases:
        rate = (ok + failed) / seconds if seconds else 0
        print(
            f"| {name} | {ok} | {failed} | {seconds:.2f} | {rate:.0f} |"
            f" {percentile(lat, 0.5) * 1000:.1f} | {percentile(lat, 0.99) * 1000:.1f} |"
        )
    print()
    print("| SHA512-CRYPT implementation | ms per hash (1 thread) | hashes/s (2 threads) |")
    print("|---|---:|---:|")
    for name, ms, rate in hashes:
        print(f"| {name} | {ms:.2f} | {rate:.0f} |")
    print()
    print(f"1/5/15-minute load after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print()
    print(
        "Target: >= 300 first logins/s on 2 cores. The stdlib `crypt` module keeps the GIL"
        " during the hash, so doveauth calls libcrypt's `crypt_r` through ctypes, which"
        " releases it. Numbers drop when other work shares the cores (see the load above)."
    )
    return 0 if all(failed == 0 for _, _, failed, _, _ in phases[:2]) else 1


if __name__ == "__main__":
    sys.exit(main())
