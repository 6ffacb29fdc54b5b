"""The file watcher shared by Peers and live queries (crsync.watcher): one thread and one OS
watch per database file, callbacks on writes and at least every fallback period, polling when
the OS refuses a watch, and nothing left once the last subscriber leaves."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from crsync import watcher

LIMIT = 10.0


def _watcher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("crsync.watcher:")]


def _write(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.close()


def test_two_subscribers_share_one_thread_and_both_hear_a_write(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _write(path)
    before = len(_watcher_threads())
    heard = [threading.Event(), threading.Event()]
    subs = [watcher.subscribe(str(path), e.set, fallback=60) for e in heard]
    try:
        assert len(_watcher_threads()) == before + 1
        assert str(path.resolve()) in watcher.watched_files()
        # the OS watch is in place once the watcher thread is inside watchfiles' loop
        for _ in range(3):
            _write(path)
            if all(e.wait(1) for e in heard):
                break
        assert all(e.is_set() for e in heard), "a write did not reach both subscribers"
    finally:
        for s in subs:
            s.close()
    assert str(path.resolve()) not in watcher.watched_files()
    assert len(_watcher_threads()) == before  # joined by the last close()


def test_the_fallback_period_calls_back_without_any_write(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _write(path)
    ticks = threading.Semaphore(0)
    sub = watcher.subscribe(str(path), ticks.release, fallback=watcher.TICK_SECONDS)
    try:
        for _ in range(3):
            assert ticks.acquire(timeout=LIMIT), "no fallback call"
    finally:
        sub.close()


def test_a_refused_os_watch_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import watchfiles

    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchfiles, "watch", refuse)
    caplog.set_level(logging.WARNING, logger="crsync.watcher")
    path = tmp_path / "a.db"
    _write(path)
    ticks = threading.Semaphore(0)
    sub = watcher.subscribe(str(path), ticks.release, fallback=watcher.TICK_SECONDS)
    try:
        for _ in range(2):
            assert ticks.acquire(timeout=LIMIT), "no polling call after the watch was refused"
    finally:
        sub.close()
    assert any("polling instead" in r.getMessage() for r in caplog.records)
    assert str(path.resolve()) not in watcher.watched_files()


def test_a_callback_that_raises_is_dropped_and_its_watcher_stops(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    _write(path)
    before = len(_watcher_threads())
    calls: list[int] = []

    def dead_loop() -> None:
        calls.append(1)
        raise RuntimeError("Event loop is closed")

    watcher.subscribe(str(path), dead_loop, fallback=watcher.TICK_SECONDS)
    key = str(path.resolve())
    deadline = time.monotonic() + LIMIT
    while key in watcher.watched_files() and time.monotonic() < deadline:
        time.sleep(0.01)  # polls the watcher thread's own decision (bounded)
    assert key not in watcher.watched_files()
    assert calls == [1]
    for t in _watcher_threads():
        if t.name.endswith(key):
            t.join(LIMIT)
    assert len(_watcher_threads()) == before
