"""chatmail-fsreport: storage and activity statistics per domain.

Prints, for every served domain, the number of accounts, how many logged in
within the last 1/7/30/90 days (mtime of ``password``), bytes and number of
messages, a histogram of message sizes and the largest mailboxes.  With
``--textfile PATH`` the same numbers are also written as Prometheus
textfile-collector metrics (written to a temporary file and renamed, so the
node exporter never reads half a file).  ``--public-dir DIR`` writes, per
domain, ``DIR/<domain>.prom`` with the account total only: the small,
privacy-safe subset a relay may publish at ``https://<domain>/metrics``.
``--quiet`` leaves out the table (for timers that only feed the metrics).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError, main_config_error, read_config
from .expire import DAY, iter_accounts, last_login, scan_messages

ACTIVE_DAYS = (1, 7, 30, 90)
# Upper bounds (exclusive) of the size histogram buckets, in bytes.
SIZE_BUCKETS = ((100_000, "<100k"), (1_000_000, "<1M"), (10_000_000, "<10M"), (None, ">=10M"))
TOP_N = 10


@dataclass
class DomainStats:
    domain: str
    accounts: int = 0
    active: dict = field(default_factory=lambda: dict.fromkeys(ACTIVE_DAYS, 0))
    mailbox_bytes: int = 0
    messages: int = 0
    histogram: dict = field(default_factory=lambda: {label: 0 for _, label in SIZE_BUCKETS})
    mailbox_sizes: list = field(default_factory=list)  # (bytes, addr)

    def top(self, n=TOP_N):
        return sorted(self.mailbox_sizes, key=lambda t: (-t[0], t[1]))[:n]


def bucket_label(size: int) -> str:
    for limit, label in SIZE_BUCKETS:
        if limit is None or size < limit:
            return label
    raise AssertionError("unreachable")


def collect(dc, now: float) -> DomainStats:
    stats = DomainStats(dc.mail_domain)
    for account in iter_accounts(dc.mailboxes_path):
        stats.accounts += 1
        login = last_login(account)
        if login is not None:
            for days in ACTIVE_DAYS:
                if login >= now - days * DAY:
                    stats.active[days] += 1
        size = 0
        for msg in scan_messages(account):
            stats.messages += 1
            size += msg.size
            stats.histogram[bucket_label(msg.size)] += 1
        stats.mailbox_bytes += size
        stats.mailbox_sizes.append((size, account.name))
    return stats


def human(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_table(all_stats: list[DomainStats]) -> str:
    lines = []
    for s in all_stats:
        lines.append(f"== {s.domain}")
        lines.append(f"  {'accounts':<24}{s.accounts:>12}")
        for days in ACTIVE_DAYS:
            lines.append(f"  {f'active last {days}d':<24}{s.active[days]:>12}")
        lines.append(f"  {'messages':<24}{s.messages:>12}")
        lines.append(f"  {'mailbox bytes':<24}{s.mailbox_bytes:>12}  ({human(s.mailbox_bytes)})")
        lines.append("  message sizes:")
        for _, label in SIZE_BUCKETS:
            lines.append(f"    {label:<22}{s.histogram[label]:>12}")
        top = s.top()
        if top:
            lines.append("  largest mailboxes:")
            for size, addr in top:
                lines.append(f"    {addr:<40}{human(size):>12}")
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_metrics(all_stats: list[DomainStats]) -> str:
    metrics = [
        ("chatmail_accounts", "gauge", "Number of accounts."),
        ("chatmail_accounts_active", "gauge", "Accounts that logged in within <days> days."),
        ("chatmail_mailbox_bytes", "gauge", "Bytes of all messages in the mailboxes."),
        ("chatmail_messages", "gauge", "Number of messages in the mailboxes."),
        ("chatmail_messages_by_size", "gauge", "Number of messages per size bucket."),
    ]
    out = []
    for name, kind, help_text in metrics:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for s in all_stats:
            dom = f'domain="{_label(s.domain)}"'
            if name == "chatmail_accounts":
                out.append(f"{name}{{{dom}}} {s.accounts}")
            elif name == "chatmail_accounts_active":
                for days in ACTIVE_DAYS:
                    out.append(f'{name}{{{dom},days="{days}"}} {s.active[days]}')
            elif name == "chatmail_mailbox_bytes":
                out.append(f"{name}{{{dom}}} {s.mailbox_bytes}")
            elif name == "chatmail_messages":
                out.append(f"{name}{{{dom}}} {s.messages}")
            else:
                for _, label in SIZE_BUCKETS:
                    out.append(f'{name}{{{dom},size="{_label(label)}"}} {s.histogram[label]}')
    return "\n".join(out) + "\n"


def format_public(stats: DomainStats) -> str:
    """The account total of one domain, nothing that tells about one account."""
    name = "chatmail_accounts"
    return (
        f"# HELP {name} Number of accounts.\n# TYPE {name} gauge\n"
        f'{name}{{domain="{_label(stats.domain)}"}} {stats.accounts}\n'
    )


def write_atomic(path: Path, text: str):
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-fsreport", description="Storage and activity report per domain."
    )
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument(
        "--textfile", type=Path, help="also write Prometheus textfile metrics to this path"
    )
    parser.add_argument(
        "--public-dir",
        type=Path,
        help="also write each domain's account total to DIR/<domain>.prom (public subset)",
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the table")
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        return main_config_error(exc)
    now = time.time()
    all_stats = [collect(config.domains[d], now) for d in config.mail_domains]
    if not args.quiet:
        sys.stdout.write(format_table(all_stats))
    if args.textfile:
        write_atomic(args.textfile, format_metrics(all_stats))
    if args.public_dir:
        for stats in all_stats:
            write_atomic(args.public_dir / f"{stats.domain}.prom", format_public(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
