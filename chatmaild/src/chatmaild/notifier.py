"""Push notifications for new messages, with a queue that survives crashes.

For every device token of a recipient :meth:`Notifier.notify` writes one
request file into ``<state_dir>/pending_notifications/`` (JSON, written to a
temporary name, fsynced and renamed, so a ``kill -9`` never leaves half a
file behind) and hands it to a pool of worker threads.  A worker POSTs the
token as the request body to ``push_notification_url``:

* 2xx: delivered, the file is removed;
* 410 Gone: the gateway says the token is dead; the file is removed and the
  token is deleted from the account's ``metadata.json``;
* anything else (other status, refused connection, timeout): retried after
  1, 2, 4, ... seconds (capped at :attr:`Notifier.max_delay`) until
  ``push_retry_max_seconds`` have passed since the message arrived; then
  the request is dropped with an error in the log.

On start every file left in the queue directory is loaded and retried; the
time the message arrived is stored in the file, so the give-up bound holds
across restarts.

The queue is bounded.  A push only tells a device "fetch your mail", so a
request for a token that is still waiting (queued, or waiting for a retry)
covers every later message: new requests for it are coalesced into it.  On
top of that at most :attr:`Notifier.max_per_account` requests of one
account and :attr:`Notifier.max_total` in all are held; beyond that new ones
are dropped, with a log line at most once a minute saying how many.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import metrics

log = logging.getLogger("chatmaild.notifier")

QUEUE_DIRNAME = "pending_notifications"
PUSH = "chatmail_push_requests_total"


@dataclass
class PushRequest:
    path: Path
    addr: str
    token: str
    created: float
    attempts: int = 0

    def remove(self):
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def write_file_atomic(path: Path, data: bytes, mode=0o600):
    """Write ``data`` to ``path`` via a fsynced temporary file and rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    # make the rename itself durable
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


class Notifier:
    #: seconds before the first retry; doubled after every failure
    base_delay = 1.0
    #: longest wait between two attempts
    max_delay = 300.0
    #: HTTP timeout per request
    http_timeout = 10.0
    #: worker threads sending requests
    num_workers = 4
    #: requests held (queued, waiting for a retry or in flight) per account
    max_per_account = 32
    #: requests held in all
    max_total = 20000
    #: seconds between two log lines about dropped requests
    drop_log_interval = 60.0

    def __init__(self, queue_dir, url, retry_max_seconds, remove_token=None):
        """``remove_token(addr, token)`` is called when the gateway answers 410."""
        self.queue_dir = Path(queue_dir)
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.retry_max_seconds = retry_max_seconds
        self.remove_token = remove_token
        self._heap = []  # (due, seq, PushRequest)
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._threads = []
        # bounds: requests waiting per (addr, token), held per addr and in all
        self._waiting: dict[tuple[str, str], PushRequest] = {}
        self._held: dict[str, int] = {}
        self._total = 0
        self.coalesced = 0
        self.dropped = 0
        self._dropped_unlogged = 0
        self._next_drop_log = 0.0

    # ---- queue ----------------------------------------------------------

    def notify(self, addr: str, tokens):
        """Queue one push request per token (persisted before returning).
        Nothing is queued when no ``push_notification_url`` is configured."""
        if not self.url:
            return
        now = time.time()
        for token in tokens:
            req = PushRequest(self.queue_dir / uuid.uuid4().hex, addr, token, now)
            if not self._admit(req):
                continue
            body = json.dumps({"addr": addr, "token": token, "created": now})
            try:
                write_file_atomic(req.path, body.encode("utf-8"))
            except BaseException:
                self._release(req)
                raise
            metrics.inc(PUSH, result="queued")
            self._schedule(req, now)

    def _admit(self, req: PushRequest) -> bool:
        """Reserve room for ``req``: False if a waiting request for the same
        token covers it (coalesced) or a bound is reached (dropped)."""
        key = (req.addr, req.token)
        with self._cond:
            if key in self._waiting:
                self.coalesced += 1
                metrics.inc(PUSH, result="coalesced")
                return False
            if self._held.get(req.addr, 0) >= self.max_per_account or (
                self._total >= self.max_total
            ):
                self.dropped += 1
                metrics.inc(PUSH, result="dropped")
                self._dropped_unlogged += 1
                now = time.monotonic()
                if now >= self._next_drop_log:
                    log.warning(
                        "push queue full (%d held, %d for %s): dropped %d request(s)",
                        self._total,
                        self._held.get(req.addr, 0),
                        req.addr,
                        self._dropped_unlogged,
                    )
                    self._dropped_unlogged = 0
                    self._next_drop_log = now + self.drop_log_interval
                return False
            self._waiting[key] = req
            self._held[req.addr] = self._held.get(req.addr, 0) + 1
            self._total += 1
            return True

    def _release(self, req: PushRequest):
        """``req`` is done (sent, gone or dropped): free its room."""
        with self._cond:
            key = (req.addr, req.token)
            if self._waiting.get(key) is req:
                del self._waiting[key]
            held = self._held.get(req.addr, 0) - 1
            if held > 0:
                self._held[req.addr] = held
            else:
                self._held.pop(req.addr, None)
            self._total -= 1

    def load_pending(self) -> int:
        """Queue every request file left from an earlier run; returns how many."""
        count = 0
        now = time.time()
        for path in sorted(self.queue_dir.iterdir()):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
                continue
            try:
                data = json.loads(path.read_text("utf-8"))
                req = PushRequest(
                    path, str(data["addr"]), str(data["token"]), float(data["created"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                log.warning("removing unreadable queue file %s", path)
                path.unlink(missing_ok=True)
                continue
            if not self._admit(req):
                path.unlink(missing_ok=True)
                continue
            self._schedule(req, now)
            count += 1
        return count

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def _schedule(self, req: PushRequest, due: float):
        with self._cond:
            heapq.heappush(self._heap, (due, next(self._seq), req))
            self._cond.notify()

    def _next(self):
        with self._cond:
            while not self._stopped:
                if self._heap:
                    due = self._heap[0][0]
                    wait = due - time.time()
                    if wait <= 0:
                        req = heapq.heappop(self._heap)[2]
                        # in flight: a message arriving now needs its own push
                        key = (req.addr, req.token)
                        if self._waiting.get(key) is req:
                            del self._waiting[key]
                        return req
                    self._cond.wait(min(wait, 60))
                else:
                    self._cond.wait(60)
            return None

    # ---- workers --------------------------------------------------------

    def start(self):
        self.load_pending()
        for i in range(self.num_workers):
            t = threading.Thread(target=self._work, name=f"notifier-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self):
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for t in self._threads:
            t.join(timeout=self.http_timeout + 1)

    def _work(self):
        while True:
            req = self._next()
            if req is None:
                return
            try:
                self.attempt(req)
            except Exception:
                log.exception("push request for %s failed unexpectedly", req.addr)
                self._retry_or_drop(req, "internal error")

    def post(self, token: str) -> int:
        """POST ``token``; return the HTTP status (raises OSError on network errors)."""
        request = urllib.request.Request(
            self.url,
            data=token.encode("utf-8"),
            method="POST",
            headers={"Content-Type": "text/plain"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.http_timeout) as resp:
                resp.read()
                return resp.status
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code

    def attempt(self, req: PushRequest):
        if not req.path.exists():
            self._release(req)
            return  # removed meanwhile (e.g. by an operator)
        req.attempts += 1
        try:
            status = self.post(req.token)
        except (OSError, ValueError) as exc:
            self._retry_or_drop(req, f"{type(exc).__name__}: {exc}")
            return
        if 200 <= status < 300:
            metrics.inc(PUSH, result="sent")
            req.remove()
            self._release(req)
        elif status == 410:
            metrics.inc(PUSH, result="gone")
            log.info("push gateway: token of %s is gone, removing it", req.addr)
            if self.remove_token is not None:
                try:
                    self.remove_token(req.addr, req.token)
                except Exception:
                    log.exception("could not remove token of %s", req.addr)
            req.remove()
            self._release(req)
        else:
            self._retry_or_drop(req, f"HTTP status {status}")

    def _retry_or_drop(self, req: PushRequest, why: str):
        delay = min(self.base_delay * 2 ** (req.attempts - 1), self.max_delay)
        due = time.time() + delay
        if due > req.created + self.retry_max_seconds:
            log.error(
                "push request for %s dropped after %d attempts (%s)", req.addr, req.attempts, why
            )
            metrics.inc(PUSH, result="dropped")
            req.remove()
            self._release(req)
            return
        key = (req.addr, req.token)
        with self._cond:
            newer = self._waiting.get(key)
            if newer is None:
                self._waiting[key] = req
        if newer is not None:
            # a newer request for this token waits already and covers this one
            req.remove()
            self._release(req)
            return
        log.warning("push request for %s failed (%s), retry in %.0fs", req.addr, why, delay)
        metrics.inc(PUSH, result="retried")
        self._schedule(req, due)
