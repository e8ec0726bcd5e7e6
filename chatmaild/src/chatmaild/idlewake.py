"""Wake IMAP sessions that Dovecot hibernated while a new-mail notice was pending.

A live Dovecot 2.3 imap process in IDLE hears of a delivery through inotify
on the Maildir's ``new/`` and ``cur/`` but acts on it only 500 ms later
(a compiled-in debounce).  When the session is handed to the imap-hibernate
process inside that window, the pending notice dies with the process: the
hibernate process watches for *later* inotify events only, so the client
would not hear of the message until the next one arrives.

chatmail-metadata learns of every delivery (the push Lua script sets
``messagenew``) and, :data:`WAKE_DELAY` seconds later, creates and removes
a hidden file in the account's ``new/``.  That is one more inotify event:
a hibernated session wakes and syncs (the client sees the message), a live
one does a sync that finds nothing new.  Maildir syncing skips names
starting with a dot, so the file is never taken for a message.  Deliveries
to one account within the delay share one wake-up, due after the last.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from pathlib import Path

log = logging.getLogger("chatmaild.idlewake")

#: seconds after a delivery: past Dovecot's 500 ms debounce plus the
#: hand-off to imap-hibernate
WAKE_DELAY = 1.0

_counter = itertools.count()


def poke(maildir: Path) -> bool:
    """Create and remove a hidden file in ``maildir/new``; False if that failed."""
    name = maildir / "new" / f".chatmail-wake.{os.getpid()}.{next(_counter)}"
    try:
        fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        log.debug("no wake-up for %s: %s", maildir, exc)
        return False
    os.close(fd)
    try:
        os.unlink(name)
    except OSError as exc:  # pragma: no cover - someone else removed it
        log.warning("could not remove %s: %s", name, exc)
    return True


class IdleWaker:
    """One thread that pokes each scheduled Maildir once its delay is over."""

    def __init__(self, delay: float = WAKE_DELAY, clock=time.monotonic, poke=poke):
        self.delay = delay
        self.clock = clock
        self.poke = poke
        self._due: dict[Path, float] = {}
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="idle-wake", daemon=True)

    def start(self) -> IdleWaker:
        self._thread.start()
        return self

    def schedule(self, maildir: Path) -> None:
        with self._cond:
            self._due[Path(maildir)] = self.clock() + self.delay
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._due)

    def _take_ready(self) -> list[Path]:
        with self._cond:
            while True:
                if not self._due:
                    self._cond.wait()
                    continue
                now = self.clock()
                ready = [path for path, due in self._due.items() if due <= now]
                if ready:
                    for path in ready:
                        del self._due[path]
                    return ready
                self._cond.wait(min(self._due.values()) - now)

    def _run(self) -> None:
        while True:
            for maildir in self._take_ready():
                try:
                    self.poke(maildir)
                except Exception:  # keep the thread alive whatever happens
                    log.exception("wake-up of %s failed", maildir)
