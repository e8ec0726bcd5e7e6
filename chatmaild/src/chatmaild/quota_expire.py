"""chatmail-quota-expire: shrink one mailbox below a size target.

Dovecot runs this through ``/usr/local/bin/chatmail-quota-warning`` (the
``quota-warning`` service) when a save takes a mailbox past 75% or past 100%
of its quota, and when a session (IMAP login, LMTP delivery) starts while
the mailbox is already over 100%::

    chatmail-quota-expire CONFIG TARGET_MB MAILBOX_DIR

The oldest messages of all folders are removed until the mailbox holds at
most TARGET_MB megabytes, but messages younger than 24 hours are never
touched: a client that keeps filling its mailbox should see the quota
error instead of silently losing what just arrived.  ``maildirsize`` is
dropped afterwards, which makes Dovecot recount the quota at its next look
(no ``doveadm quota recalc`` needed).  The daily ``chatmail-expire`` does the
same trim for every mailbox above 75%.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .config import ConfigError, main_config_error, read_config
from .expire import invalidate_quota, quota_trim_plan, remove_file, scan_messages

MB = 1024 * 1024


def expire_to_target(mailbox_dir: Path, target_bytes: int, now: float | None = None, out=None):
    """Remove oldest messages older than a day until the total size is at
    most ``target_bytes``.  Returns (removed_count, total_bytes_after)."""
    now = time.time() if now is None else now
    out = out or sys.stdout
    chosen, total = quota_trim_plan(scan_messages(mailbox_dir), target_bytes, now)
    removed = 0
    for msg in chosen:
        if remove_file(msg.path):
            removed += 1
            print(f"removed {msg.path} ({msg.size} bytes)", file=out)
    if removed:
        invalidate_quota(mailbox_dir)
    return removed, total


def _inside_mailboxes(config, mailbox_dir: Path) -> bool:
    resolved = mailbox_dir.resolve()
    for dc in config.domains.values():
        base = dc.mailboxes_path.resolve()
        if resolved.parent == base and "@" in resolved.name:
            return True
    return False


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-quota-expire",
        description="Remove the oldest messages of a mailbox down to TARGET_MB megabytes.",
    )
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument("target_mb", type=int, help="target size in megabytes")
    parser.add_argument("mailbox_dir", type=Path, help="the account's mailbox directory")
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        return main_config_error(exc)
    if args.target_mb < 0:
        print("TARGET_MB must not be negative", file=sys.stderr)
        return 2
    if not _inside_mailboxes(config, args.mailbox_dir) or not args.mailbox_dir.is_dir():
        print(
            f"refusing {args.mailbox_dir}: not an account directory of the mailbox tree",
            file=sys.stderr,
        )
        return 2
    removed, total = expire_to_target(args.mailbox_dir, args.target_mb * MB)
    print(
        f"quota-expire: removed {removed} message(s) from {args.mailbox_dir.name},"
        f" {total} bytes left"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
