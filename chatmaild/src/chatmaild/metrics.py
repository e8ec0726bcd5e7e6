"""Counters of the chatmaild daemons, exported as Prometheus text files.

Every daemon counts what it decides (filtermail: accepted and refused mail
per reason; doveauth: accounts created; chatmail-metadata: push requests)
in the process-wide :data:`REGISTRY`.  :func:`start` starts a thread that
writes the registry every few seconds to ``<metrics_dir>/<name>.prom``
(a temporary file renamed over the old one, so a reader never sees half a
file) and once more when the process exits.  The node exporter's textfile
collector serves these files; no daemon opens a port of its own.

Counters start at zero with the process, as Prometheus expects of counters
(``rate()`` and ``increase()`` handle restarts).  Nothing is written when
``metrics_dir`` is empty or does not exist (metrics switched off).

    from . import metrics
    metrics.inc("chatmail_filtermail_messages_total", direction="in", result="rejected")
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("chatmaild.metrics")

# name -> (type, help); a family must be declared before it is counted.
FAMILIES = {
    "chatmail_filtermail_messages_total": (
        "counter",
        "Mails filtermail decided on, by direction, result (accepted, rejected) and reason.",
    ),
    "chatmail_filtermail_recipients_refused_total": (
        "counter",
        "Recipients refused by filtermail incoming at RCPT (not served here, bad syntax).",
    ),
    "chatmail_filtermail_reinjected_total": (
        "counter",
        "Accepted mails handed back to Postfix, by the class of Postfix's reply.",
    ),
    "chatmail_accounts_created_total": ("counter", "Accounts created by a first login."),
    "chatmail_account_creations_refused_total": (
        "counter",
        "First logins that did not create an account (name, password, load or nocreate).",
    ),
    "chatmail_push_requests_total": (
        "counter",
        "Push notification requests by outcome: queued, sent, gone (token removed), "
        "retried (an attempt failed), dropped (given up or queue full), coalesced.",
    ),
    "chatmail_push_queued": ("gauge", "Push notification requests waiting to be sent."),
}


def _escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: tuple) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


class Registry:
    """Thread-safe counters and callback gauges of one process."""

    def __init__(self, families=None):
        self.families = dict(FAMILIES if families is None else families)
        self._lock = threading.Lock()
        self._values = {}  # (name, ((label, value), ...)) -> number
        self._gauges = {}  # name -> callable returning a number

    def _check(self, name):
        if name not in self.families:
            raise KeyError(f"undeclared metric {name!r}")

    def inc(self, name: str, amount: float = 1, **labels):
        self._check(name)
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def set_gauge(self, name: str, func):
        """``func()`` gives the gauge's value whenever the registry is rendered."""
        self._check(name)
        with self._lock:
            self._gauges[name] = func

    def value(self, name: str, **labels):
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0)

    def reset(self):
        with self._lock:
            self._values.clear()
            self._gauges.clear()

    def render(self) -> str:
        """Prometheus text exposition of everything counted so far."""
        with self._lock:
            values = dict(self._values)
            gauges = dict(self._gauges)
        samples = {}
        for (name, labels), value in values.items():
            samples.setdefault(name, []).append((labels, value))
        for name, func in gauges.items():
            try:
                samples.setdefault(name, []).append(((), func()))
            except Exception:  # a gauge must never break the export
                log.exception("gauge %s failed", name)
        out = []
        for name in sorted(samples):
            kind, help_text = self.families[name]
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(samples[name]):
                number = int(value) if float(value).is_integer() else value
                out.append(f"{name}{_labels(labels)} {number}")
        return "\n".join(out) + "\n" if out else ""


REGISTRY = Registry()


def inc(name: str, amount: float = 1, **labels):
    REGISTRY.inc(name, amount, **labels)


def set_gauge(name: str, func):
    REGISTRY.set_gauge(name, func)


def write_atomic(path: Path, text: str, mode=0o644):
    """Write ``text`` to ``path`` through a temporary file in the same
    directory and a rename (readers see the old or the new file, never half)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TextfileWriter:
    """Writes ``registry`` to ``directory/<name>.prom`` every ``interval``
    seconds (only when the text changed) and at :meth:`stop`."""

    def __init__(self, directory, name: str, registry=REGISTRY, interval: float = 5.0):
        self.path = Path(directory) / f"{name}.prom"
        self.registry = registry
        self.interval = interval
        self._last = None
        self._stop = threading.Event()
        self._thread = None
        self._warned = False

    def write(self):
        if not self.path.parent.is_dir():
            return False
        text = self.registry.render()
        if text == self._last:
            return False
        try:
            write_atomic(self.path, text)
        except OSError as exc:
            if not self._warned:
                log.warning("cannot write metrics to %s: %s", self.path, exc)
                self._warned = True
            return False
        self._last = text
        return True

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.write()
            except Exception:
                log.exception("writing metrics failed")

    def start(self):
        self._thread = threading.Thread(target=self._run, name="metrics", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        try:
            self.write()
        except Exception:
            log.exception("writing metrics failed")


def start(config, name: str, interval: float = 5.0) -> TextfileWriter | None:
    """Export :data:`REGISTRY` for the daemon ``name`` when the config has a
    ``metrics_dir``; the last values are written at interpreter exit."""
    directory = getattr(config, "metrics_dir", "") or ""
    if not directory:
        return None
    writer = TextfileWriter(directory, name, interval=interval).start()
    atexit.register(writer.stop)
    return writer
