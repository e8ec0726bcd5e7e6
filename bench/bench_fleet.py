"""Benchmark fleet convergence: a salt master (on this machine) converging 1, 2
and 3 fresh systemd relays in parallel, and a repeat highstate on the
converged fleet.

    python bench/bench_fleet.py [--sizes 1,2,3]

Uses the test harness (tests/harness: dockerd, image, apt proxy) and the
fleet master helper (tests/harness/fleet_master.py).  Prints a markdown table;
every host and the master are removed again.  Bounded: one round per size,
each highstate at most 30 minutes.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import release_harness_at_exit  # noqa: E402
from tests.fleet.conftest import write_pillar  # noqa: E402
from tests.harness import ensure_infra, fleet_master, hosts  # noqa: E402

# no scheduled run may interfere with the measured ones
SETTINGS = {
    "highstate": {"enabled": False, "minutes": 60, "splay": 0, "timeout": 3600},
    "mine": {"interval": 60},
}


def load():
    return os.getloadavg()[0]


def one_round(size):
    minions = [f"bench{i}.test" for i in range(1, size + 1)]
    pillar_dir = Path(tempfile.mkdtemp(prefix="cmsalt-bench-pillar-"))
    for minion in minions:
        write_pillar(pillar_dir, minion)
    master = fleet_master.Master(pillar_dir, fleet_settings=SETTINGS).start()
    booted = []
    row = {"size": size, "load_before": load()}
    try:
        t0 = time.monotonic()
        booted = hosts.boot_many(
            [{"name": f"cmsalt-{m.split('.')[0]}-{os.getpid()}", "fqdn": m} for m in minions]
        )
        for host in booted:
            fleet_master.bootstrap_minion(host, master)
        master.accept(minions)
        master.wait_ping(minions)
        row["enroll"] = time.monotonic() - t0
        t1 = time.monotonic()
        first = fleet_master.highstate(master, minions)
        row["first"] = time.monotonic() - t1
        row["first_ok"] = all(r.ok for r in first.values())
        row["states"] = max(len(r.states) for r in first.values())
        t2 = time.monotonic()
        again = fleet_master.highstate(master, minions)
        row["repeat"] = time.monotonic() - t2
        row["repeat_changes"] = sum(len(r.changed) for r in again.values())
    finally:
        for host in booted:
            hosts.destroy(host)
        master.cleanup()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="1,2,3")
    args = parser.parse_args(argv)
    release_harness_at_exit()
    ensure_infra()
    rows = [one_round(int(n)) for n in args.sizes.split(",")]
    print(
        "| relays | enroll (boot, bootstrap, key, ping) | first highstate | all ok | states/relay"
        " | repeat highstate | changes on repeat | load before |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['size']} | {r.get('enroll', 0):.0f} s | {r.get('first', 0):.0f} s"
            f" | {r.get('first_ok')} | {r.get('states')} | {r.get('repeat', 0):.0f} s"
            f" | {r.get('repeat_changes')} | {r['load_before']:.1f} |"
        )
    return 0 if all(r.get("first_ok") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
