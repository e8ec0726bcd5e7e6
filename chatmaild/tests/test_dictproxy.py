"""The dict protocol server base class, on a real unix socket."""

import logging
import socket
import stat
import threading

import pytest
from chatmaild.dictproxy import (
    COMMIT_NOTFOUND,
    DictError,
    DictProxy,
    tabescape,
    tabunescape,
)
from hypothesis import given
from hypothesis import strategies as st


class MemoryDict(DictProxy):
    """A small in-memory dict per user, to exercise every protocol path."""

    max_line_length = 4096

    def __init__(self):
        self.data = {}
        self.lock = threading.Lock()
        self.commits = []

    def lookup(self, key, user):
        if key == "boom":
            raise RuntimeError("handler bug")
        if key == "refuse":
            raise DictError("refused\there")
        if key == "json":
            return {"user": user, "n": 1}
        with self.lock:
            return self.data.get((user, key))

    def iterate(self, path, user, flags):
        with self.lock:
            rows = sorted((k, v) for (u, k), v in self.data.items() if u == user)
        return [(k, v) for k, v in rows if k.startswith(path)]

    def commit(self, txn):
        self.commits.append(txn)
        if any(key == "missing" for _, key, _ in txn.changes):
            return COMMIT_NOTFOUND
        return super().commit(txn)

    def transaction_set(self, user, key, value):
        if key == "readonly":
            return False
        with self.lock:
            self.data[(user, key)] = value
        return True

    def transaction_unset(self, user, key):
        with self.lock:
            self.data.pop((user, key), None)
        return True

    def transaction_append(self, user, key, value):
        with self.lock:
            self.data[(user, key)] = self.data.get((user, key), "") + value
        return True

    def transaction_atomic_inc(self, user, key, diff):
        with self.lock:
            self.data[(user, key)] = str(int(self.data.get((user, key), "0")) + diff)
        return True


@pytest.fixture(autouse=True)
def dict_log(caplog):
    """Collect the server's log records here instead of passing them on to
    the root logger (salt's deferred stderr handler would print them at exit)."""
    logger = logging.getLogger("chatmaild.dictproxy")
    logger.addHandler(caplog.handler)
    logger.propagate = False
    caplog.set_level(logging.INFO, logger="chatmaild.dictproxy")
    yield caplog
    logger.propagate = True
    logger.removeHandler(caplog.handler)


@pytest.fixture
def memdict(socket_path):
    proxy = MemoryDict()
    path = socket_path("mem.socket")
    server = proxy.make_server(path, mode=0o660)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    proxy.path = path
    yield proxy
    server.shutdown()
    server.server_close()


def test_escape_roundtrip():
    for text in ["plain", "a\tb", "x\ny\rz", "\001", "\0end", "mixed\001t\t"]:
        assert tabunescape(tabescape(text)) == text
        assert "\t" not in tabescape(text) and "\n" not in tabescape(text)


def test_socket_mode_and_stale_socket_replaced(socket_path):
    path = socket_path("stale.socket")
    path.write_text("left over")
    server = MemoryDict().make_server(path, mode=0o660)
    try:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
    finally:
        server.server_close()


def test_lookup(memdict, dict_client):
    client = dict_client(memdict.path, user="alice@x.org")
    assert client.lookup("shared/nothing") == ("N", "")
    memdict.data[("alice@x.org", "shared/k")] = "va\tlue\nwith\001escapes"
    assert client.lookup("shared/k") == ("O", "va\tlue\nwith\001escapes")
    code, value = client.lookup("json", user="bob@x.org")
    assert code == "O" and value == '{"user": "bob@x.org", "n": 1}'


def test_lookup_without_user_field_uses_hello_user(memdict, dict_client):
    client = dict_client(memdict.path, user="carol@x.org")
    memdict.data[("carol@x.org", "priv/k")] = "1"
    client.send_line("Lpriv/k")
    assert client.read_line() == "O1"


def test_handler_errors_answer_fail(memdict, dict_client):
    client = dict_client(memdict.path)
    assert client.lookup("boom")[0] == "F"
    code, message = client.lookup("refuse")
    assert (code, message) == ("F", "refused\there")
    assert client.lookup("fine") == ("N", "")


def test_iterate(memdict, dict_client):
    client = dict_client(memdict.path, user="u@x.org")
    assert client.iterate("shared/") == []
    for i in range(5):
        memdict.data[("u@x.org", f"shared/k{i}")] = f"v{i}"
    memdict.data[("other@x.org", "shared/k9")] = "no"
    assert client.iterate("shared/") == [(f"shared/k{i}", f"v{i}") for i in range(5)]
    assert client.iterate("shared/", max_rows=2) == [("shared/k0", "v0"), ("shared/k1", "v1")]
    # flag 0x08: no values
    assert client.iterate("shared/", flags=8)[0] == ("shared/k0", "")


def test_transactions(memdict, dict_client):
    client = dict_client(memdict.path, user="t@x.org")
    reply = client.transaction(
        "1",
        [("S", "k", "v"), ("S", "n", "5"), ("A", "n", "-2"), ("P", "k", "+"), ("S", "gone", "x")],
    )
    assert reply == "O1"
    assert client.transaction("2", [("U", "gone")]) == "O2"
    assert client.lookup("k") == ("O", "v+")
    assert client.lookup("n") == ("O", "3")
    assert client.lookup("gone") == ("N", "")
    # a set the dict refuses fails the commit
    assert client.transaction("3", [("S", "readonly", "x")]) == "F3"
    # commit result "not found"
    assert client.transaction("4", [("S", "missing", "x")]) == "N4"
    # async commit
    assert client.transaction("5", [("S", "a", "1")], commit="D") == "AO5"
    assert client.lookup("a") == ("O", "1")


def test_rollback_and_unknown_transaction(memdict, dict_client):
    client = dict_client(memdict.path, user="r@x.org")
    client.send_line("B7\tr@x.org")
    client.send_line("S7\tk\tv")
    client.send_line("R7")
    client.send_line("C7")
    assert client.read_line() == "F7"
    assert client.lookup("k") == ("N", "")
    # set on an unknown transaction is ignored, commit of it fails
    client.send_line("S8\tk\tv")
    client.send_line("C8")
    assert client.read_line() == "F8"
    # a broken atomic increment fails its transaction
    assert client.transaction("9", [("A", "n", "abc")]) == "F9"


def test_transaction_ids_are_per_connection(memdict, dict_client):
    one = dict_client(memdict.path, user="p@x.org")
    two = dict_client(memdict.path, user="q@x.org")
    one.send_line("B1\tp@x.org")
    two.send_line("B1\tq@x.org")
    one.send_line("S1\tk\tfrom-one")
    two.send_line("S1\tk\tfrom-two")
    two.send_line("C1")
    one.send_line("C1")
    assert one.read_line() == "O1"
    assert two.read_line() == "O1"
    assert memdict.data[("p@x.org", "k")] == "from-one"
    assert memdict.data[("q@x.org", "k")] == "from-two"


@pytest.mark.parametrize(
    "garbage",
    [
        b"Xunknown command",
        b"I",
        b"Inotanumber\t0\tpath",
        b"\xff\xfe\xfd",
        b"L\xffbad-utf8",
        b"S\tno-transaction",
        b"B",
        b"Hgarbage",
        b"\t\t\t",
        b"C",
        b"L" + b"x" * 10000,
    ],
)
def test_malformed_lines_keep_serving(memdict, dict_client, dict_log, garbage):
    client = dict_client(memdict.path, user="m@x.org")
    client.send_line(garbage)
    if garbage[:1] in (b"L", b"I", b"C"):
        # commands the client waits for are answered with a failure
        assert client.read_line().startswith("F")
    memdict.data[("m@x.org", "alive")] = "yes"
    assert client.lookup("alive") == ("O", "yes")
    # and the daemon still accepts new connections
    assert dict_client(memdict.path, user="m@x.org").lookup("alive") == ("O", "yes")
    # the bad line was logged
    assert [r for r in dict_log.records if r.levelno >= logging.WARNING]


def test_client_disconnect_mid_line(memdict, dict_client):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(memdict.path))
    s.sendall(b"H3\t2\t0\tu\tx\nLhalf-a-li")
    s.close()
    assert dict_client(memdict.path).lookup("k") == ("N", "")


def test_parallel_connections(memdict, dict_client):
    clients = [dict_client(memdict.path, user=f"c{i}@x.org") for i in range(50)]
    errors = []

    def work(i, client):
        try:
            for j in range(20):
                assert client.transaction(str(j), [("S", "k", f"{i}-{j}")]) == f"O{j}"
                assert client.lookup("k") == ("O", f"{i}-{j}")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@given(st.text())
def test_escape_roundtrip_property(text):
    escaped = tabescape(text)
    assert tabunescape(escaped) == text
    assert not set(escaped) & {"\t", "\n", "\r", "\0"}
