"""The wake-up scheduler of chatmail-metadata (chatmaild.idlewake)."""

import threading

from chatmaild.idlewake import IdleWaker, poke


def test_poke_leaves_nothing_behind(tmp_path):
    new = tmp_path / "new"
    new.mkdir()
    (new / "1700000000.M1P1.host").write_text("a message")
    before = new.stat().st_mtime_ns
    assert poke(tmp_path)
    assert [p.name for p in new.iterdir()] == ["1700000000.M1P1.host"]
    assert new.stat().st_mtime_ns != before
    # no Maildir (account gone, or never received mail): nothing to wake
    assert not poke(tmp_path / "missing")


def test_deliveries_within_the_delay_share_one_wakeup(tmp_path):
    now = [100.0]
    poked = []
    done = threading.Event()

    def record(path):
        poked.append((path, now[0]))
        done.set()

    waker = IdleWaker(delay=1.0, clock=lambda: now[0], poke=record).start()
    a, b = tmp_path / "a", tmp_path / "b"
    waker.schedule(a)
    now[0] = 100.6
    waker.schedule(a)  # a second delivery to a: due 1 s after this one
    waker.schedule(b)
    now[0] = 101.2  # first due time of a has passed, but it was moved
    waker.schedule(tmp_path / "c")  # wakes the thread so it looks again
    assert not done.wait(0.3)
    assert poked == []
    now[0] = 101.7
    waker.schedule(tmp_path / "d")
    assert done.wait(5)
    for _ in range(50):
        if len(poked) == 2:
            break
        done.wait(0.05)
    assert sorted(p.name for p, _ in poked) == ["a", "b"]
    assert waker.pending() == 2  # c and d


def test_a_failing_poke_does_not_stop_the_thread(tmp_path):
    calls = []
    done = threading.Event()

    def flaky(path):
        calls.append(path)
        if len(calls) == 1:
            raise RuntimeError("boom")
        done.set()

    waker = IdleWaker(delay=0.01, poke=flaky).start()
    waker.schedule(tmp_path / "x")
    waker.schedule(tmp_path / "y")
    assert done.wait(5)
    assert len(calls) == 2
