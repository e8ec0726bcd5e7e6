"""A threaded unix-socket server for Dovecot 2.3's dict protocol.

Dovecot talks to ``proxy:<socket>:<name>`` dicts (passdb/userdb via
``driver = dict``, ``last_login_dict``, ``mail_attribute_dict``) with a
line protocol.  Each line is one command; fields are separated by TAB and
tab-escaped (``\\001`` + ``1``/``t``/``r``/``n``/``0`` for
``\\001``/TAB/CR/LF/NUL).  What a 2.3 client sends and what we answer::

    H<major>\\t<minor>\\t<value_type>\\t<user>\\t<dict_name>   hello, no reply
    L<key>\\t<user>                  -> O<value> | N | F<error>
    I<flags>\\t<max_rows>\\t<path>\\t<user>
                                    -> O<key>\\t<value> ... then an empty line
                                       (F line instead of the empty line on error)
    B<id>\\t<user>                   begin transaction, no reply
    S<id>\\t<key>\\t<value>           set, no reply
    U<id>\\t<key>                    unset, no reply
    P<id>\\t<key>\\t<value>           append, no reply
    A<id>\\t<key>\\t<diff>            atomic increment, no reply
    T<id>\\t<secs>\\t<nsecs>          timestamp, no reply (ignored)
    C<id>                           commit       -> O<id> | N<id> | F<id>
    D<id>                           async commit -> AO<id> | AN<id> | AF<id>
    R<id>                           rollback, no reply

Replies are written in request order (we never announce async ids, which
Dovecot allows for servers of protocol minor version 0).  Transactions are
per connection: Dovecot reuses ids on different connections.  ``<user>`` is
missing in Dovecot < 2.3.17; then the user from the hello line is used.

A malformed line (unknown command, missing fields, bad UTF-8, a line longer
than :attr:`DictProxy.max_line_length`) is logged; commands that expect a
reply get ``F``, the others are dropped.  An exception in a handler method is
logged and answered with ``F``: the connection and the daemon keep serving.

Subclass API (override what the dict needs; all methods run in the
connection's thread, so make them thread-safe)::

    class MyDict(DictProxy):
        def lookup(self, key, user):            # -> str | None  (None = N)
        def iterate(self, path, user, flags):   # -> iterable of (key, value)
        def transaction_set(self, user, key, value):    # -> bool
        def transaction_unset(self, user, key):         # -> bool
        def transaction_append(self, user, key, value): # -> bool
        def transaction_atomic_inc(self, user, key, diff: int):  # -> bool
        def commit(self, txn: Transaction) -> int       # 1 ok, 0 not found, -1 fail

The default :meth:`DictProxy.commit` applies ``txn.changes`` in order via
the ``transaction_*`` methods and returns ``-1`` if one of them returned
False or raised, else ``1``.  Override ``commit`` to apply a transaction
atomically.  Raise :class:`DictError` from ``lookup``/``iterate`` to answer
``F<message>``.  Non-string lookup results are sent as JSON.

Serving::

    proxy = MyDict()
    proxy.serve_forever("/run/x/x.socket", mode=0o660)    # blocks
    # or, e.g. in tests: server = proxy.make_server(path); server.serve_forever()

:func:`run_dict_daemon` is the shared ``main()`` body of the console
scripts ``doveauth``/``lastlogin``/``chatmail-metadata``:
``<script> <chatmail.ini> <socket>``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("chatmaild.dictproxy")

ITERATE_FLAG_RECURSE = 0x01
ITERATE_FLAG_SORT_BY_KEY = 0x02
ITERATE_FLAG_SORT_BY_VALUE = 0x04
ITERATE_FLAG_NO_VALUE = 0x08
ITERATE_FLAG_EXACT_KEY = 0x10
ITERATE_FLAG_ASYNC = 0x20

COMMIT_OK = 1
COMMIT_NOTFOUND = 0
COMMIT_FAILED = -1

_COMMIT_CHARS = {COMMIT_OK: "O", COMMIT_NOTFOUND: "N"}
_ESCAPES = {"\001": "\0011", "\t": "\001t", "\r": "\001r", "\n": "\001n", "\0": "\0010"}
_UNESCAPES = {"0": "\0", "1": "\001", "t": "\t", "r": "\r", "n": "\n"}
# commands whose answer the client waits for
_REPLYING = {"L", "I", "C", "D"}


class DictError(Exception):
    """Raised by handler methods to answer ``F<message>``."""


def tabescape(text: str) -> str:
    """Escape one field like Dovecot's ``str_append_tabescaped``."""
    if not any(c in text for c in _ESCAPES):
        return text
    return "".join(_ESCAPES.get(c, c) for c in text)


def tabunescape(text: str) -> str:
    """Reverse :func:`tabescape` (a lone trailing ``\\001`` is kept)."""
    if "\001" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\001" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append(_UNESCAPES.get(nxt, nxt))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def split_fields(text: str) -> list[str]:
    return [tabunescape(f) for f in text.split("\t")]


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a unix socket (``SO_PEERCRED``) and
    its name from ``/proc/<pid>/comm`` as it was when it connected ("" if
    unknown).  Dovecot runs each protocol as its own executable, so the name
    tells an LMTP delivery (``lmtp``) from an IMAP session (``imap``)."""

    pid: int = 0
    uid: int = -1
    gid: int = -1
    process: str = ""


def socket_peer(sock) -> Peer:
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, gid = struct.unpack("3i", raw)
    except (OSError, AttributeError, struct.error):
        return Peer()
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
            process = f.read().strip()
    except OSError:
        process = ""
    return Peer(pid, uid, gid, process)


@dataclass
class Transaction:
    """One open transaction of a connection: ``changes`` are tuples
    ``("set", key, value)``, ``("unset", key, None)``, ``("append", key,
    value)`` or ``("inc", key, diff)`` in the order they arrived."""

    id: str
    user: str
    changes: list = field(default_factory=list)
    failed: bool = False
    peer: Peer = field(default_factory=Peer)


class Connection:
    """Per-connection state: hello values and open transactions."""

    def __init__(self, peer: Peer | None = None):
        self.peer = peer or Peer()
        self.major = None
        self.minor = None
        self.value_type = None
        self.user = ""
        self.dict_name = ""
        self.transactions: dict[str, Transaction] = {}


class DictProxy:
    #: lines longer than this (bytes, without newline) are refused
    max_line_length = 65536
    #: listen backlog
    request_queue_size = 1024

    # ---- methods for subclasses ---------------------------------------

    def lookup(self, key: str, user: str):
        """Return the value for ``key`` (str, or an object sent as JSON),
        or None for "not found"."""
        return None

    def iterate(self, path: str, user: str, flags: int):
        """Yield ``(key, value)`` pairs below ``path``."""
        return ()

    def transaction_set(self, user: str, key: str, value: str) -> bool:
        log.warning("set of %r not supported by this dict", key)
        return False

    def transaction_unset(self, user: str, key: str) -> bool:
        log.warning("unset of %r not supported by this dict", key)
        return False

    def transaction_append(self, user: str, key: str, value: str) -> bool:
        log.warning("append to %r not supported by this dict", key)
        return False

    def transaction_atomic_inc(self, user: str, key: str, diff: int) -> bool:
        log.warning("atomic increment of %r not supported by this dict", key)
        return False

    def commit(self, txn: Transaction) -> int:
        """Apply ``txn.changes``; return 1 (ok), 0 (not found) or -1 (failed)."""
        ok = not txn.failed
        for op, key, value in txn.changes:
            try:
                if op == "set":
                    done = self.transaction_set(txn.user, key, value)
                elif op == "unset":
                    done = self.transaction_unset(txn.user, key)
                elif op == "append":
                    done = self.transaction_append(txn.user, key, value)
                else:
                    done = self.transaction_atomic_inc(txn.user, key, value)
            except Exception:
                log.exception("transaction %s: %s %r failed", txn.id, op, key)
                done = False
            if not done:
                ok = False
        return COMMIT_OK if ok else COMMIT_FAILED

    # ---- protocol ------------------------------------------------------

    def handle_line(self, conn: Connection, line: str):
        """Process one request line (without newline); return the reply text
        (possibly several lines, each ending in newline) or None."""
        cmd, rest = line[:1], line[1:]
        try:
            handler = self._handlers.get(cmd)
            if handler is None:
                log.warning("unknown dict command %r ignored", line[:80])
                return None
            return handler(self, conn, rest)
        except _Malformed as exc:
            log.warning("malformed dict request %r: %s", line[:200], exc)
        except DictError as exc:
            log.warning("dict request %r failed: %s", line[:200], exc)
            return f"F{tabescape(str(exc))}\n" if cmd == "L" else _fail_reply(cmd, rest)
        except Exception:
            log.exception("dict request %r failed", line[:200])
        return _fail_reply(cmd, rest)

    def _hello(self, conn, rest):
        fields = split_fields(rest)
        if len(fields) < 2:
            raise _Malformed("hello needs major and minor version")
        conn.major, conn.minor = fields[0], fields[1]
        if fields[0] != "3":
            log.warning("dict client speaks protocol major version %s, expected 3", fields[0])
        conn.value_type = fields[2] if len(fields) > 2 else None
        conn.user = fields[3] if len(fields) > 3 else ""
        conn.dict_name = fields[4] if len(fields) > 4 else ""
        return None

    def _lookup(self, conn, rest):
        fields = split_fields(rest)
        if not fields[0]:
            raise _Malformed("lookup without key")
        user = fields[1] if len(fields) > 1 else conn.user
        value = self.lookup(fields[0], user)
        if value is None:
            return "N\n"
        if not isinstance(value, str):
            value = json.dumps(value)
        return f"O{tabescape(value)}\n"

    def _iterate(self, conn, rest):
        fields = split_fields(rest)
        if len(fields) < 3 or not fields[0].isdigit() or not fields[1].isdigit():
            raise _Malformed("iterate needs flags, max_rows and path")
        flags, max_rows, path = int(fields[0]), int(fields[1]), fields[2]
        user = fields[3] if len(fields) > 3 else conn.user
        out = []
        for n, (key, value) in enumerate(self.iterate(path, user, flags)):
            if max_rows and n >= max_rows:
                break
            if flags & ITERATE_FLAG_NO_VALUE:
                value = ""
            elif not isinstance(value, str):
                value = json.dumps(value)
            out.append(f"O{tabescape(key)}\t{tabescape(value)}\n")
        out.append("\n")
        return "".join(out)

    def _txn(self, conn, tid) -> Transaction:
        txn = conn.transactions.get(tid)
        if txn is None:
            raise _Malformed(f"transaction {tid!r} does not exist")
        return txn

    def _begin(self, conn, rest):
        fields = split_fields(rest)
        tid = fields[0]
        if not tid.isdigit():
            raise _Malformed("invalid transaction id")
        if tid in conn.transactions:
            log.warning("transaction %s begun twice; the old one is dropped", tid)
        user = fields[1] if len(fields) > 1 else conn.user
        conn.transactions[tid] = Transaction(id=tid, user=user, peer=conn.peer)
        return None

    def _change(self, conn, rest, op, nfields):
        fields = split_fields(rest)
        txn = self._txn(conn, fields[0])
        if len(fields) != nfields:
            txn.failed = True
            raise _Malformed(f"{op} needs {nfields} fields")
        key = fields[1]
        value = fields[2] if nfields == 3 else None
        if op == "inc":
            try:
                value = int(value)
            except ValueError:
                txn.failed = True
                raise _Malformed("atomic increment needs an integer") from None
        txn.changes.append((op, key, value))
        return None

    def _set(self, conn, rest):
        return self._change(conn, rest, "set", 3)

    def _unset(self, conn, rest):
        return self._change(conn, rest, "unset", 2)

    def _append(self, conn, rest):
        return self._change(conn, rest, "append", 3)

    def _inc(self, conn, rest):
        return self._change(conn, rest, "inc", 3)

    def _timestamp(self, conn, rest):
        self._txn(conn, split_fields(rest)[0])
        return None

    def _finish(self, conn, rest, prefix):
        tid = split_fields(rest)[0]
        txn = conn.transactions.pop(tid, None)
        if txn is None:
            raise _Malformed(f"commit of unknown transaction {tid!r}")
        try:
            result = self.commit(txn)
        except Exception:
            log.exception("commit of transaction %s failed", tid)
            result = COMMIT_FAILED
        return f"{prefix}{_COMMIT_CHARS.get(result, 'F')}{tid}\n"

    def _commit(self, conn, rest):
        return self._finish(conn, rest, "")

    def _commit_async(self, conn, rest):
        return self._finish(conn, rest, "A")

    def _rollback(self, conn, rest):
        tid = split_fields(rest)[0]
        if conn.transactions.pop(tid, None) is None:
            raise _Malformed(f"rollback of unknown transaction {tid!r}")
        return None

    _handlers = {
        "H": _hello,
        "L": _lookup,
        "I": _iterate,
        "B": _begin,
        "S": _set,
        "U": _unset,
        "P": _append,
        "A": _inc,
        "T": _timestamp,
        "C": _commit,
        "D": _commit_async,
        "R": _rollback,
    }

    # ---- connection loop and server -------------------------------------

    def serve_connection(self, rfile, wfile, peer: Peer | None = None):
        """Read request lines from ``rfile`` until EOF, writing replies.
        ``peer`` is the connecting process (:func:`socket_peer`)."""
        conn = Connection(peer)
        limit = self.max_line_length
        while True:
            raw = rfile.readline(limit + 1)
            if not raw:
                break
            if len(raw) > limit and not raw.endswith(b"\n"):
                # skip the rest of the oversized line
                while True:
                    more = rfile.readline(limit + 1)
                    if not more or more.endswith(b"\n"):
                        break
                log.warning("dict request longer than %d bytes refused", limit)
                reply = "F\n" if raw[:1].decode("latin-1") in _REPLYING else None
            else:
                raw = raw.rstrip(b"\n").rstrip(b"\r")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    log.warning("dict request with invalid UTF-8 refused: %r", raw[:80])
                    cmd = raw[:1].decode("latin-1")
                    reply = _fail_reply(cmd, raw[1:].decode("latin-1"))
                else:
                    if not line:
                        continue
                    reply = self.handle_line(conn, line)
            if reply:
                wfile.write(reply.encode("utf-8"))
                wfile.flush()

    def make_server(self, socket_path, mode=0o660):
        """Bind ``socket_path`` (replacing a stale socket) with ``mode`` and
        return the (not yet serving) server."""
        proxy = self
        path = Path(socket_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            st = path.lstat()
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode):
                raise OSError(f"{path} is a directory")
            path.unlink()

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    proxy.serve_connection(self.rfile, self.wfile, socket_peer(self.request))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception:
                    log.exception("dict connection failed")

        class Server(socketserver.ThreadingUnixStreamServer):
            daemon_threads = True
            block_on_close = False
            request_queue_size = self.request_queue_size

        old_umask = os.umask(0o777 & ~mode)
        try:
            server = Server(str(path), Handler)
        finally:
            os.umask(old_umask)
        os.chmod(path, mode)
        return server

    def serve_forever(self, socket_path, mode=0o660):
        """Serve on ``socket_path`` until SIGTERM/SIGINT; removes the socket."""
        server = self.make_server(socket_path, mode)

        def stop(signum, frame):
            raise _Stop()

        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
        log.info("serving dict protocol on %s", socket_path)
        try:
            server.serve_forever()
        except _Stop:
            log.info("stopping")
        finally:
            server.server_close()
            try:
                os.unlink(socket_path)
            except OSError:
                pass


class _Malformed(Exception):
    pass


class _Stop(BaseException):
    """Raised by the SIGTERM/SIGINT handler to leave serve_forever at once."""


def _fail_reply(cmd: str, rest: str):
    if cmd == "C":
        return f"F{rest.split(chr(9))[0]}\n"
    if cmd == "D":
        return f"AF{rest.split(chr(9))[0]}\n"
    if cmd in ("L", "I"):
        return "F\n"
    return None


def setup_logging(name: str):
    """Log to stderr (the journal under systemd) with the program name."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"{name}: %(levelname)s %(message)s",
    )


def run_dict_daemon(name: str, factory, argv=None, mode=0o660) -> int:
    """Shared main of the dict daemons: ``<name> <chatmail.ini> <socket>``.

    The config path comes first, like every chatmaild console script.  The
    reference relay's order (socket first) is accepted too: when only the
    second argument is an existing file, the two are swapped.

    ``factory(config) -> DictProxy``.  Returns the exit code (2 on a
    configuration error)."""
    from .config import ConfigError, main_config_error, read_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 2:
        print(f"usage: {name} <chatmail.ini> <socket-path>", file=sys.stderr)
        return 2
    if os.path.isfile(argv[1]) and not os.path.isfile(argv[0]):
        argv.reverse()
    inipath, socket_path = argv
    setup_logging(name)
    try:
        config = read_config(inipath)
    except ConfigError as exc:
        return main_config_error(exc)
    from . import metrics

    metrics.start(config, name)
    proxy = factory(config)
    proxy.serve_forever(socket_path, mode=mode)
    return 0
