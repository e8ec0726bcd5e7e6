"""chatmail-expire: daily removal of old messages and inactive accounts.

For every served domain the mailbox tree ``<mailboxes_dir>/<domain>/`` is
walked once.  Per account directory (a name containing ``@``):

* the whole account goes when its ``password`` file (whose mtime is the day
  of the last login) is older than ``delete_inactive_users_after`` days;
* otherwise messages in ``cur/`` and ``new/`` of the inbox and of every
  Maildir++ subfolder (``.Name/``) go when older than ``delete_mails_after``
  days, and large ones (more than 200000 bytes, read from the ``,S=`` tag of
  the file name or the file size) go when older than ``delete_large_after``
  days;
* then, if what is left is more than 75% of the domain's
  ``max_mailbox_size``, the oldest messages older than a day go until at
  most 70% remain (the same trim Dovecot's quota warning runs, see
  ``chatmail-quota-expire``), so a mailbox that went over its quota while
  nothing triggered the warning (a failed trim, a lowered quota, a burst of
  young mail that has aged since) is usable again after the next daily run.

Without ``--remove`` nothing is changed; every item that would go is
printed.  Symbolic links are never followed below the domain directory, and
files that vanish while we work (a client expunging) are skipped quietly.

The scanning helpers here are shared by ``chatmail-quota-expire`` and
``chatmail-fsreport``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import stat
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, main_config_error, read_config

DAY = 86400
LARGE_MESSAGE_BYTES = 200_000
# Quota trimming: above QUOTA_TRIM_AT percent of max_mailbox_size the oldest
# messages go until QUOTA_TRIM_TO percent remain; messages younger than
# QUOTA_KEEP_YOUNGER seconds are never removed to make room (a mailbox full of
# fresh mail should refuse more, which its owner's client notices).
QUOTA_TRIM_AT = 75
QUOTA_TRIM_TO = 70
QUOTA_KEEP_YOUNGER = DAY
_SIZE_TAG_RE = re.compile(r",S=(\d+)")


@dataclass(frozen=True)
class Message:
    path: Path
    mtime: float
    size: int
    seen: bool  # lies in cur/ (a client has noticed it)


def message_size(name: str, st_size: int) -> int:
    """The message size: the ``,S=<bytes>`` maildir tag if present, else the
    size of the file on disk."""
    m = _SIZE_TAG_RE.search(name)
    return int(m.group(1)) if m else st_size


def _scandir(path):
    """Entries of ``path``, or nothing if it vanished or is not a directory."""
    try:
        with os.scandir(path) as it:
            return list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []


def _is_real_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def maildir_folders(account_dir: Path) -> list[Path]:
    """The inbox (the account directory itself) and its Maildir++ subfolders."""
    folders = [Path(account_dir)]
    for entry in _scandir(account_dir):
        if entry.name.startswith(".") and entry.name not in (".", "..") and _is_real_dir(entry):
            folders.append(Path(entry.path))
    return folders


def scan_messages(account_dir: Path) -> list[Message]:
    """Every message file (regular files only) of an account, all folders."""
    messages = []
    for folder in maildir_folders(account_dir):
        for sub in ("cur", "new"):
            subdir = folder / sub
            if subdir.is_symlink():
                continue
            for entry in _scandir(subdir):
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    continue
                messages.append(
                    Message(
                        Path(entry.path),
                        st.st_mtime,
                        message_size(entry.name, st.st_size),
                        sub == "cur",
                    )
                )
    return messages


def iter_accounts(domain_dir: Path):
    """Account directories (real directories named like an address)."""
    for entry in sorted(_scandir(domain_dir), key=lambda e: e.name):
        if "@" in entry.name and _is_real_dir(entry):
            yield Path(entry.path)


def last_login(account_dir: Path) -> float | None:
    """mtime of the account's password file, or None if there is none."""
    try:
        st = os.lstat(Path(account_dir) / "password")
    except FileNotFoundError:
        return None
    return st.st_mtime if stat.S_ISREG(st.st_mode) else None


def remove_file(path: Path) -> bool:
    """Unlink ``path``; False if it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def quota_trim_plan(messages, target_bytes: int, now: float):
    """Which messages to remove so that at most ``target_bytes`` remain.

    Oldest first (by mtime, then path); a message younger than
    ``QUOTA_KEEP_YOUNGER`` stops the selection, so young mail is never
    chosen.  Returns (messages_to_remove, total_bytes_after)."""
    total = sum(m.size for m in messages)
    newest_removable = now - QUOTA_KEEP_YOUNGER
    chosen = []
    for msg in sorted(messages, key=lambda m: (m.mtime, str(m.path))):
        if total <= target_bytes or msg.mtime > newest_removable:
            break
        chosen.append(msg)
        total -= msg.size
    return chosen, total


def invalidate_quota(account_dir: Path):
    """Drop Dovecot's ``maildirsize`` so the quota is recalculated."""
    remove_file(Path(account_dir) / "maildirsize")


def _age_days(now: float, mtime: float) -> int:
    return int((now - mtime) // DAY)


class Expiry:
    def __init__(self, config, now: float, remove: bool, verbose: bool, out=sys.stdout):
        self.config = config
        self.now = now
        self.remove = remove
        self.verbose = verbose
        self.out = out
        self.accounts = 0
        self.accounts_removed = 0
        self.messages = 0
        self.messages_removed = 0
        self.bytes_removed = 0
        self.quota_trimmed = 0

    def report(self, line: str):
        if not self.remove or self.verbose:
            prefix = "" if self.remove else "would remove "
            print(prefix + line, file=self.out)

    def process_domain(self, dc):
        inactive_days = dc.delete_inactive_users_after
        cutoff_login = self.now - inactive_days * DAY
        cutoff_mails = self.now - dc.delete_mails_after * DAY
        cutoff_large = self.now - dc.delete_large_after * DAY
        for account in iter_accounts(dc.mailboxes_path):
            self.accounts += 1
            login = last_login(account)
            if inactive_days and login is not None and login < cutoff_login:
                self.report(f"account {account} (last login {_age_days(self.now, login)} days ago)")
                if self.remove:
                    shutil.rmtree(account, ignore_errors=True)
                self.accounts_removed += 1
                continue
            changed = False
            kept = []
            for msg in scan_messages(account):
                self.messages += 1
                if msg.mtime < cutoff_mails:
                    why = f"{_age_days(self.now, msg.mtime)} days old"
                elif msg.size > LARGE_MESSAGE_BYTES and msg.mtime < cutoff_large:
                    why = f"large, {msg.size} bytes, {_age_days(self.now, msg.mtime)} days old"
                else:
                    kept.append(msg)
                    continue
                changed |= self.remove_message(msg, why)
            changed |= self.trim_to_quota(dc, kept)
            if changed and self.remove:
                invalidate_quota(account)

    def remove_message(self, msg, why: str) -> bool:
        self.report(f"message {msg.path} ({why})")
        if self.remove and not remove_file(msg.path):
            return False
        self.messages_removed += 1
        self.bytes_removed += msg.size
        return True

    def trim_to_quota(self, dc, messages) -> bool:
        """Above QUOTA_TRIM_AT % of the domain's quota, remove the oldest
        messages older than a day down to QUOTA_TRIM_TO %."""
        quota = dc.max_mailbox_size
        total = sum(m.size for m in messages)
        if quota <= 0 or total * 100 <= quota * QUOTA_TRIM_AT:
            return False
        chosen, _after = quota_trim_plan(messages, quota * QUOTA_TRIM_TO // 100, self.now)
        if chosen:
            self.quota_trimmed += 1
        percent = total * 100 // quota
        changed = False
        for msg in chosen:
            why = f"mailbox at {percent}% of {dc.max_mailbox_size_raw}, oldest first"
            changed |= self.remove_message(msg, why)
        return changed

    def summary(self) -> str:
        verb = "removed" if self.remove else "would remove"
        return (
            f"{verb} {self.accounts_removed} of {self.accounts} accounts and"
            f" {self.messages_removed} of {self.messages} messages"
            f" ({self.bytes_removed} bytes) in the remaining accounts;"
            f" {self.quota_trimmed} mailbox(es) trimmed to {QUOTA_TRIM_TO}% of quota"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="chatmail-expire",
        description="Remove old messages and inactive accounts (dry run by default).",
    )
    parser.add_argument("config", help="path to chatmail.ini")
    parser.add_argument("--remove", action="store_true", help="really delete (default: only print)")
    parser.add_argument(
        "--days-offset",
        type=int,
        default=0,
        metavar="N",
        help="pretend today is N days later (preview of a future run)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="with --remove, print every item"
    )
    args = parser.parse_args(argv)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        return main_config_error(exc)

    now = time.time() + args.days_offset * DAY
    expiry = Expiry(config, now=now, remove=args.remove, verbose=args.verbose)
    for domain in config.mail_domains:
        expiry.process_domain(config.domains[domain])
    print(expiry.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
