"""Benchmark: what filtermail outgoing costs compared to a bare SMTP relay.

    python bench/bench_filtermail.py [--messages 300]

Starts, each in its own process: an SMTP sink (the stand-in for Postfix's
reinjection port), a pass-through relay (aiosmtpd plus the same reinjection
client filtermail uses, no checks) and the real ``filtermail CONFIG outgoing``.
Then 1, 10 and 50 concurrent smtplib clients (threads, one connection each,
one sender address each) send the encrypted sample mail, a bounded number of
messages per level, first through the relay, then through filtermail.

Prints a markdown table: throughput of both, the ratio, the added latency
(filtermail minus pass-through) at the median and the 99th percentile of the
per-message time from MAIL to the DATA reply, and the CPU time each server
process spent per message (the steadiest figure on a busy machine).  Both
servers get the same load in alternating rounds so that background noise
hits them alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import percentile as pct  # noqa: E402

SAMPLE = ROOT / "chatmaild" / "tests" / "mail-data" / "encrypted.eml"
DOMAIN = "bench.example.org"
RCPT = "rcpt00001@example.net"
LEVELS = (1, 10, 50)
ROUNDS = 3
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.args} did not listen on {port}")


# --- helper processes (this script re-invoked with --sink / --relay) ---


def run_sink(port: int):
    from aiosmtpd.smtp import SMTP

    class Sink:
        async def handle_DATA(self, server, session, envelope):
            return "250 2.0.0 Ok: queued"

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Sink(), data_size_limit=None, hostname="localhost"), "127.0.0.1", port
        )
        await server.serve_forever()

    asyncio.run(main())


def run_relay(port: int, target: int):
    from aiosmtpd.smtp import SMTP
    from chatmaild.filtermail_reinject import ReinjectClient

    client = ReinjectClient("127.0.0.1", target)

    class Relay:
        async def handle_DATA(self, server, session, envelope):
            return await client.send(
                envelope.mail_from, envelope.rcpt_tos, envelope.original_content
            )

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(Relay(), data_size_limit=31457280, hostname="localhost"), "127.0.0.1", port
        )
        await server.serve_forever()

    asyncio.run(main())


def spawn(argv, port):
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    wait_port(port, proc)
    return proc


# --- load generation ---


def message_for(sender: str) -> bytes:
    text = SAMPLE.read_text().replace("{from_addr}", sender).replace("{to_addr}", RCPT)
    return text.replace("\n", "\r\n").encode()


def run_level(port: int, clients: int, total: int) -> tuple[float, list[float]]:
    """Send ``total`` messages with ``clients`` threads; (seconds, latencies)."""
    per_client = max(total // clients, 1)
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def worker(index: int):
        sender = f"bench{index:04d}@{DOMAIN}"
        content = message_for(sender)
        mine = []
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
                client.ehlo()
                client.sendmail(sender, [RCPT], content)  # warm-up
                barrier.wait()
                for _ in range(per_client):
                    t0 = time.perf_counter()
                    client.sendmail(sender, [RCPT], content)
                    mine.append(time.perf_counter() - t0)
        except Exception as exc:  # reported below, the bench must not hang
            errors.append(repr(exc))
            barrier.abort()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise RuntimeError(f"{len(errors)} client errors, first: {errors[0]}")
    return elapsed, latencies


def cpu_seconds(pid: int) -> float:
    """User+system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=300, help="messages per level and mode")
    parser.add_argument("--sink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--relay", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sink:
        run_sink(args.sink)
        return 0
    if args.relay:
        run_relay(*args.relay)
        return 0

    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-filtermail-") as tmp:
        try:
            sink_port, relay_port, fm_port = free_port(), free_port(), free_port()
            ini = Path(tmp) / "chatmail.ini"
            ini.write_text(
                "[params]\n"
                f"mail_domain = {DOMAIN}\n"
                f"mailboxes_dir = {tmp}/mailboxes\n"
                f"state_dir = {tmp}/state\n"
                f"filtermail_smtp_port = {fm_port}\n"
                f"filtermail_smtp_port_incoming = {free_port()}\n"
                f"postfix_reinject_port = {sink_port}\n"
                f"postfix_reinject_port_incoming = {free_port()}\n"
                "max_user_send_per_minute = 1000000\n"
                "max_user_send_burst_size = 1000000\n"
            )
            me = [sys.executable, str(Path(__file__).resolve())]
            procs.append(spawn(me + ["--sink", str(sink_port)], sink_port))
            procs.append(spawn(me + ["--relay", str(relay_port), str(sink_port)], relay_port))
            fm = [sys.executable, "-m", "chatmaild.filtermail", str(ini), "outgoing"]
            procs.append(spawn(fm, fm_port))

            print(
                f"{args.messages} encrypted messages ({SAMPLE.stat().st_size} bytes) per level"
                f" and server, sent in {ROUNDS} alternating rounds; latency = MAIL to DATA"
                " reply; added = filtermail minus pass-through; CPU = server process CPU"
                " time per message\n"
            )
            print(
                "| clients | msgs/s pass-through | msgs/s filtermail | ratio"
                " | p50 added ms | p99 added ms | CPU µs/msg pass-through | CPU µs/msg filtermail |"
            )
            print("|---:|---:|---:|---:|---:|---:|---:|---:|")
            relay_pid, fm_pid = procs[1].pid, procs[2].pid
            for clients in LEVELS:
                stats = {"pt": [0.0, [], 0.0], "fm": [0.0, [], 0.0]}
                per_round = max(args.messages // ROUNDS, clients)
                for _ in range(ROUNDS):
                    for key, port, pid in (("pt", relay_port, relay_pid), ("fm", fm_port, fm_pid)):
                        cpu0 = cpu_seconds(pid)
                        elapsed, lat = run_level(port, clients, per_round)
                        stats[key][0] += elapsed
                        stats[key][1].extend(lat)
                        stats[key][2] += cpu_seconds(pid) - cpu0
                (pt_time, pt_lat, pt_cpu), (fm_time, fm_lat, fm_cpu) = stats["pt"], stats["fm"]
                pt_rate, fm_rate = len(pt_lat) / pt_time, len(fm_lat) / fm_time
                p50 = (statistics.median(fm_lat) - statistics.median(pt_lat)) * 1000
                p99 = (pct(fm_lat, 0.99) - pct(pt_lat, 0.99)) * 1000
                print(
                    f"| {clients} | {pt_rate:.0f} | {fm_rate:.0f} | {fm_rate / pt_rate:.2f}"
                    f" | {p50:.2f} | {p99:.2f} | {pt_cpu / len(pt_lat) * 1e6:.0f}"
                    f" | {fm_cpu / len(fm_lat) * 1e6:.0f} |",
                    flush=True,
                )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(main())
