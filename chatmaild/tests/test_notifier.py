"""Push notifications end to end: chatmail-metadata as a daemon, a local
HTTP server standing in for the push gateway."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_metadata import ADDR, MetadataDaemon, make_account, wait_for


class Gateway:
    """Records POSTs; answers with the next status of ``statuses`` (the
    last one repeats)."""

    def __init__(self, port=0, statuses=(200,)):
        self.requests = []
        self.statuses = list(statuses)
        self.lock = threading.Lock()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with gateway.lock:
                    gateway.requests.append((self.path, body.decode()))
                    status = (
                        gateway.statuses.pop(0)
                        if len(gateway.statuses) > 1
                        else (gateway.statuses[0])
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/notify"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self):
        with self.lock:
            return [body for _, body in self.requests]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def metadata(make_ini, start_daemon, dict_client, tmp_path):
    return MetadataDaemon(make_ini, start_daemon, dict_client, tmp_path)


@pytest.fixture
def gateways():
    started = []

    def start(**kwargs):
        gw = Gateway(**kwargs)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.close()


def queue_files(tmp_path):
    qdir = tmp_path / "state" / "pending_notifications"
    return [p for p in qdir.iterdir()] if qdir.exists() else []


def stored_tokens(acc):
    return set(json.loads((acc / "metadata.json").read_text())["devicetoken"])


def test_message_new_pushes_every_token(metadata, gateways, tmp_path):
    make_account(tmp_path)
    gw = gateways()
    d = metadata.start(push_notification_url=gw.url)
    d.set_token("tok-a", tid=1)
    d.set_token("tok-b", tid=2)
    assert d.message_new() == "O7"
    wait_for(lambda: len(gw.bodies()) == 2, what="two pushes")
    assert sorted(gw.bodies()) == ["tok-a", "tok-b"]
    assert {path for path, _ in gw.requests} == {"/notify"}
    wait_for(lambda: not queue_files(tmp_path), what="empty queue")
    # an account without tokens causes no request
    make_account(tmp_path, "bobby1234@chat.example.org")
    assert d.message_new(addr="bobby1234@chat.example.org", tid=8) == "O8"
    assert d.message_new(tid=9) == "O9"
    wait_for(lambda: len(gw.bodies()) == 4, what="two more pushes")
    assert d.proc.poll() is None


def test_gone_token_is_removed(metadata, gateways, tmp_path):
    acc = make_account(tmp_path)
    gw = gateways(statuses=[410, 200])
    d = metadata.start(push_notification_url=gw.url)
    d.set_token("dead-token")
    d.message_new()
    wait_for(lambda: "dead-token" not in stored_tokens(acc), what="token removal")
    assert d.tokens() == []
    assert gw.bodies() == ["dead-token"]
    # the queue file goes after the token (the notifier forgets the token first)
    wait_for(lambda: not queue_files(tmp_path), what="queue file removal")


def test_server_error_is_retried(metadata, gateways, tmp_path):
    acc = make_account(tmp_path)
    gw = gateways(statuses=[500, 503, 200])
    d = metadata.start(push_notification_url=gw.url)
    d.set_token("tok-retry")
    d.message_new()
    wait_for(lambda: len(gw.bodies()) == 3, what="third attempt")
    wait_for(lambda: not queue_files(tmp_path), what="empty queue")
    assert gw.bodies() == ["tok-retry"] * 3
    assert stored_tokens(acc) == {"tok-retry"}


def test_queue_survives_kill_9(metadata, gateways, tmp_path, free_port, start_daemon):
    make_account(tmp_path)
    port = free_port()  # nothing listens here yet: the gateway is down
    d = metadata.start(push_notification_url=f"http://127.0.0.1:{port}/notify")
    d.set_token("tok-1", tid=1)
    d.set_token("tok-2", tid=2)
    d.message_new()
    assert len(queue_files(tmp_path)) == 2
    wait_for(lambda: "retry in" in d.log(), what="a failed attempt")
    d.kill9()
    assert len(queue_files(tmp_path)) == 2
    gw = gateways(port=port)
    proc = start_daemon(["chatmail-metadata", d.sock, d.ini], socket=d.sock)
    wait_for(lambda: len(gw.bodies()) == 2, what="pushes after restart")
    assert sorted(gw.bodies()) == ["tok-1", "tok-2"]
    wait_for(lambda: not queue_files(tmp_path), what="empty queue")
    assert proc.poll() is None


def test_gives_up_after_bounded_time(metadata, gateways, tmp_path):
    acc = make_account(tmp_path)
    gw = gateways(statuses=[500])
    d = metadata.start(push_notification_url=gw.url, push_retry_max_seconds=2)
    d.set_token("tok-hopeless")
    d.message_new()
    wait_for(lambda: "dropped after" in d.log(), what="give-up")
    assert not queue_files(tmp_path)
    attempts = len(gw.bodies())
    assert 1 <= attempts <= 3
    assert stored_tokens(acc) == {"tok-hopeless"}  # only 410 removes tokens
    assert d.proc.poll() is None


def test_stale_and_broken_queue_files_on_start(metadata, gateways, tmp_path):
    make_account(tmp_path)
    gw = gateways()
    qdir = tmp_path / "state" / "pending_notifications"
    qdir.mkdir(parents=True)
    (qdir / "half.tmp").write_text('{"addr": ')
    (qdir / "broken").write_text("not json")
    old = {"addr": ADDR, "token": "tok-old", "created": time.time() - 7200}
    (qdir / "expired").write_text(json.dumps(old))
    fresh = {"addr": ADDR, "token": "tok-fresh", "created": time.time()}
    (qdir / "fresh").write_text(json.dumps(fresh))
    d = metadata.start(push_notification_url=gw.url, push_retry_max_seconds=3600)
    wait_for(lambda: not list(qdir.iterdir()), what="queue drained")
    # old requests are still tried once, within their bound nothing is lost
    assert sorted(gw.bodies()) == ["tok-fresh", "tok-old"]
    assert d.proc.poll() is None


def test_no_push_url_disables_pushes(metadata, tmp_path):
    make_account(tmp_path)
    d = metadata.start(push_notification_url="")
    d.set_token("tok")
    assert d.message_new() == "O7"
    assert d.tokens() == ["tok"]
    assert not queue_files(tmp_path)


def test_queue_bounds_in_process(tmp_path, caplog):
    from chatmaild.notifier import Notifier

    notifier = Notifier(tmp_path / "q", "http://127.0.0.1:9/notify", 3600)
    notifier.max_total = 3
    notifier.notify("a@x.org", ["t1"])
    notifier.notify("a@x.org", ["t1"])  # the waiting request covers it
    assert len(list((tmp_path / "q").iterdir())) == 1
    assert notifier.coalesced == 1
    for i in range(5):
        notifier.notify(f"u{i}@x.org", ["t"])
    assert len(list((tmp_path / "q").iterdir())) == 3
    assert notifier.dropped == 3
    assert "push queue full" in caplog.text
    # a restart reads the queue back within the same bounds
    again = Notifier(tmp_path / "q", "http://127.0.0.1:9/notify", 3600)
    again.max_total = 2
    assert again.load_pending() == 2
    assert len(list((tmp_path / "q").iterdir())) == 2
