"""``crsync.SyncThread``: a Peer in a background thread, driven from plain (non-async) code.

Every test talks to a real relay process on loopback and waits on conditions the thread
reports (``wait_state``, ``wait_synced``, callbacks setting events), each bounded in time.
"""

from __future__ import annotations

import logging
import queue
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crsync
from crsync.live import RowChange
from crsync.peer import PeerState
from crsync.sync_thread import DataChanged, StateChanged, SyncEvent, SyncStatus, SyncThread

from .conftest import RelayProcess
from .helpers import TODOS, open_db, rows

pytestmark = pytest.mark.e2e
TIMEOUT = 20.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def threads() -> Iterator[Callable[..., SyncThread]]:
    """``make(path, url, **kwargs)``: SyncThreads stopped (and checked stopped) at the end."""
    made: list[SyncThread] = []

    def make(path: Path, url: str, **kwargs: object) -> SyncThread:
        kwargs.setdefault("store", "s")
        kwargs.setdefault("backoff_max", 0.5)
        sync = SyncThread(path, url, **kwargs)  # type: ignore[arg-type]
        made.append(sync)
        return sync

    yield make
    for sync in made:
        assert sync.stop(TIMEOUT), f"{sync} did not stop"
        assert not sync.running


class Seen:
    """Rows reported by on_change, with a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.changes: list[RowChange] = []
        self.threads: set[str] = set()

    def __call__(self, changes: list[RowChange]) -> None:
        with self.cond:
            self.changes.extend(changes)
            self.threads.add(threading.current_thread().name)
            self.cond.notify_all()

    def wait(self, pred: Callable[[list[RowChange]], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: pred(self.changes), TIMEOUT), (
                f"{what} not reported within {TIMEOUT:.0f} s: {self.changes}"
            )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def merged(pk: str) -> Callable[[list[RowChange]], bool]:
    return lambda changes: any(c.pk == (pk,) and not c.local for c in changes)


def test_two_sync_threads_on_two_files_converge_and_report_merged_rows(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    token = relay.token("s")
    a_db, b_db = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    events: queue.Queue[SyncEvent] = queue.Queue()
    a = threads(tmp_path / "a.db", relay.url, token=token)
    b = threads(b_db, relay.url, token=token, events=events)  # a Database: its path is used
    seen = Seen()
    b.on_change(seen, tables=["todos"])
    a.start()
    b.start()
    assert a.wait_synced(TIMEOUT) and b.wait_synced(TIMEOUT)

    a_db.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'from a')")
    a.notify()
    seen.wait(merged("t1"), "a's row merged into b")
    assert rows(b_db) == [("t1", "from a", 0, None)]
    assert all(name == b.name for name in seen.threads)  # no call_soon: the sync thread

    b_db.conn.execute("UPDATE todos SET done = 1 WHERE id = 't1'")
    # The local write is reported when b's engine next looks at the file, which may be after
    # the push completes: wait for the report itself (queued before the callbacks run).
    seen.wait(lambda ch: any(c.pk == ("t1",) and c.local for c in ch), "b's own update")
    assert b.wait_synced(TIMEOUT) and a.wait_synced(TIMEOUT)
    assert rows(a_db) == rows(b_db) == [("t1", "from a", 1, None)]
    assert a.status == SyncStatus(PeerState.SYNCED) and b.state is PeerState.SYNCED

    queued = []
    while not events.empty():
        queued.append(events.get_nowait())
    states = [e.status.state for e in queued if isinstance(e, StateChanged)]
    assert states[0] is PeerState.CONNECTING and PeerState.SYNCED in states
    data = [c for e in queued if isinstance(e, DataChanged) for c in e.changes]
    assert any(c.pk == ("t1",) and not c.local for c in data)  # merged
    assert any(c.pk == ("t1",) and c.local for c in data)  # b's own update
    a_db.close()
    b_db.close()


def test_stop_from_another_thread_is_idempotent_and_a_stopped_thread_starts_again(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    sync = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    assert sync.stop() is True  # never started: nothing to do
    with pytest.raises(crsync.PeerStoppedError, match="not running"):
        sync.wait_synced(1)
    sync.start()
    sync.start()  # already running: nothing happens
    assert sync.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED

    results: list[bool] = []
    stoppers = [threading.Thread(target=lambda: results.append(sync.stop())) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(TIMEOUT)
    assert results == [True, True]
    assert not sync.running and sync.status == SyncStatus(PeerState.STOPPED)
    with pytest.raises(crsync.PeerStoppedError):
        sync.wait_synced(1)

    sync.start()  # a new run on the same object
    assert sync.wait_synced(TIMEOUT) is True
    assert sync.stop() and sync.stop()


def test_wait_synced_returns_false_after_its_timeout_while_the_relay_is_unreachable(
    tmp_path: Path, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    url = f"ws://127.0.0.1:{free_port()}"
    sync = threads(tmp_path / "a.db", url)
    sync.start()
    began = time.monotonic()
    assert sync.wait_synced(0.5) is False
    assert time.monotonic() - began < 0.5 + 3.0
    assert sync.wait_state(PeerState.OFFLINE, timeout=TIMEOUT) is PeerState.OFFLINE
    assert sync.wait_state(PeerState.SYNCED, timeout=0.2) is None
    status = sync.status
    assert status.state in (PeerState.OFFLINE, PeerState.CONNECTING)
    assert sync.running
    with pytest.raises(crsync.CrsyncError, match="non-negative"):
        sync.wait_synced(-1)


def test_a_refused_token_ends_in_error_with_its_reason_and_wait_synced_raises_it(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    states: list[SyncStatus] = []
    sync = threads(tmp_path / "a.db", relay.url, store="other", token=relay.token("s"))
    sync.on_state(states.append)
    sync.start()
    assert sync.wait_state(PeerState.ERROR, timeout=TIMEOUT) is PeerState.ERROR
    sync.stop(TIMEOUT)  # the thread ends by itself; stop only waits
    status = sync.status
    assert status.state is PeerState.ERROR
    assert isinstance(status.error, crsync.AuthError)
    assert status.reason == str(status.error)
    assert states[-1] == status
    with pytest.raises(crsync.AuthError):
        sync.wait_synced(1)
    # The lock was released: another thread syncs the file (with the right store).
    other = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    other.start()
    assert other.wait_synced(TIMEOUT)


def test_bad_configuration_is_refused_when_the_thread_is_made(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with pytest.raises(crsync.RelayURLError, match="ws:// or wss://"):
        SyncThread(path, "http://127.0.0.1:1", store="s")
    with pytest.raises(crsync.CrsyncError, match="unknown Peer options: bogus"):
        SyncThread(path, "ws://127.0.0.1:1", store="s", bogus=1)
    with pytest.raises(crsync.CrsyncError, match="in memory"):
        SyncThread(":memory:", "ws://127.0.0.1:1", store="s")
    with pytest.raises(crsync.CrsyncError, match="store must be a string"):
        SyncThread(path, "ws://127.0.0.1:1", store=1)  # type: ignore[arg-type]
    with pytest.raises(crsync.CrsyncError, match="watch_changes"):
        SyncThread(path, "ws://127.0.0.1:1", store="s", watch_changes=False).on_change(print)


def test_a_second_sync_thread_on_the_same_file_waits_in_standby_then_takes_over(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    token = relay.token("s")
    db = open_db(tmp_path / "a.db")
    other_db = open_db(tmp_path / "b.db")
    first = threads(tmp_path / "a.db", relay.url, token=token)
    second = threads(tmp_path / "a.db", relay.url, token=token)
    other = threads(tmp_path / "b.db", relay.url, token=token)
    seen = Seen()
    other.on_change(seen)
    first.start()
    assert first.wait_state(PeerState.SYNCED, timeout=TIMEOUT)
    second.start()
    assert second.wait_state(PeerState.STANDBY, timeout=TIMEOUT) is PeerState.STANDBY
    assert second.reason is not None and "crsync-sync.lock" in second.reason
    assert second.wait_synced(0.3) is False  # the first one syncs this file
    other.start()

    db.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'one')")
    seen.wait(merged("t1"), "the first syncer's push")
    assert first.stop()
    assert second.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('t2', 'two')")
    second.notify()
    seen.wait(merged("t2"), "the push of the one that took over")
    assert second.running and second.error is None
    assert rows(other_db) == rows(db)
    db.close()
    other_db.close()


STANDBY_PEER = textwrap.dedent(
    """
    import sys, trio, crsync
    async def main():
        db = crsync.connect(sys.argv[1])
        async with crsync.Peer(db, sys.argv[2], store="s", token=sys.argv[3]) as peer:
            await peer.wait_state(crsync.PeerState.STANDBY)
            print("standby", flush=True)
            await peer.wait_state(crsync.PeerState.SYNCED)
            print("synced", flush=True)
    trio.run(main)
    """
)


HOLDER_PEER = textwrap.dedent(
    """
    import sys, trio, crsync
    async def main():
        db = crsync.connect(sys.argv[1])
        async with crsync.Peer(db, sys.argv[2], store="s", token=sys.argv[3]) as peer:
            await peer.wait_synced()
            print("synced", flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the test closes stdin
    trio.run(main)
    """
)


def test_a_peer_in_another_process_waits_while_a_sync_thread_syncs_the_file(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    token = relay.token("s")
    open_db(tmp_path / "a.db").close()
    sync = threads(tmp_path / "a.db", relay.url, token=token)
    sync.start()
    assert sync.wait_synced(TIMEOUT)
    proc = subprocess.Popen(
        [sys.executable, "-c", STANDBY_PEER, str(tmp_path / "a.db"), relay.url, token],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "standby"
        assert sync.stop()
        out, err = proc.communicate(timeout=TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert out.strip() == "synced" and proc.returncode == 0, err

    # And back: the thread waits while a process holds the lock, and takes over when it ends.
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER_PEER, str(tmp_path / "a.db"), relay.url, token],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "synced"
        sync.start()
        assert sync.wait_state(PeerState.STANDBY, timeout=TIMEOUT) is PeerState.STANDBY
        proc.stdin.close()  # the holder leaves ``async with`` and exits
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sync.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED


def test_relay_killed_and_restarted_the_thread_reconnects_and_its_state_says_so(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    token = relay.token("s")
    a_db, b_db = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a = threads(tmp_path / "a.db", relay.url, token=token)
    b = threads(tmp_path / "b.db", relay.url, token=token)
    seen = Seen()
    b.on_change(seen)
    statuses: list[SyncStatus] = []
    a.on_state(statuses.append)
    a.start()
    b.start()
    assert a.wait_synced(TIMEOUT) and b.wait_synced(TIMEOUT)

    relay.kill()
    assert a.wait_state(PeerState.OFFLINE, timeout=TIMEOUT) is PeerState.OFFLINE
    a_db.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'written offline')")
    assert a.wait_synced(0.2) is False
    offline = [s for s in statuses if s.state is PeerState.OFFLINE]
    assert offline and all("unreachable" in (s.reason or "") for s in offline), offline
    relay.start()
    assert a.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED
    seen.wait(merged("t1"), "the offline write after the relay came back")
    assert rows(b_db) == rows(a_db)
    assert a.running and b.running and a.error is None
    a_db.close()
    b_db.close()


def test_callbacks_that_raise_are_logged_and_syncing_goes_on(
    tmp_path: Path,
    relay: RelayProcess,
    threads: Callable[..., SyncThread],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, logger="crsync.sync_thread")
    token = relay.token("s")
    a_db = open_db(tmp_path / "a.db")
    open_db(tmp_path / "b.db").close()
    a = threads(tmp_path / "a.db", relay.url, token=token)
    b = threads(tmp_path / "b.db", relay.url, token=token)

    def boom(_arg: object) -> None:
        raise RuntimeError("bug in the app's callback")

    seen = Seen()
    b.on_state(boom)
    b.on_change(boom)
    b.on_change(seen)
    a.start()
    b.start()
    assert b.wait_synced(TIMEOUT)
    a_db.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'x')")
    a.notify()
    seen.wait(merged("t1"), "the merge after callbacks raised")
    assert b.running and b.wait_synced(TIMEOUT)
    failures = [r for r in caplog.records if "callback_failed" in r.getMessage()]
    assert failures and all(r.exc_info and "bug in" in str(r.exc_info[1]) for r in failures)
    a_db.close()


def test_call_soon_runs_the_callbacks_on_the_app_thread(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    inbox: queue.Queue[Callable[[], None]] = queue.Queue()
    sync = threads(tmp_path / "a.db", relay.url, token=relay.token("s"), call_soon=inbox.put)
    open_db(tmp_path / "a.db").close()
    ran_on: list[str] = []
    states: list[PeerState] = []

    def on_state(status: SyncStatus) -> None:
        ran_on.append(threading.current_thread().name)
        states.append(status.state)

    sync.on_state(on_state)
    sync.start()
    deadline = time.monotonic() + TIMEOUT
    while PeerState.SYNCED not in states:  # the app's own event loop
        inbox.get(timeout=max(deadline - time.monotonic(), 0))()
    assert set(ran_on) == {threading.current_thread().name}


EXIT_SCRIPT = textwrap.dedent(
    """
    import logging, sys, threading, crsync
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr, format="%(message)s")
    logging.getLogger("crsync.peer").setLevel(logging.WARNING)
    sync = crsync.SyncThread(sys.argv[1], sys.argv[2], store="s", token=sys.argv[3])
    sync.start()
    assert sync.wait_synced(20)
    # An app thread that is not a daemon and waits for the sync thread to end: it ends only
    # if the SyncThread is stopped before the interpreter joins non-daemon threads.
    threading.Thread(target=lambda: sync.wait_state(crsync.PeerState.STOPPED, timeout=60)).start()
    print("synced", flush=True)
    # falls off the end without stop()
    """
)


def test_interpreter_exit_with_a_running_sync_thread_exits_promptly(
    tmp_path: Path, relay: RelayProcess
) -> None:
    open_db(tmp_path / "a.db").close()
    began = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, str(tmp_path / "a.db"), relay.url, relay.token("s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "synced"
    assert "state=stopped" in done.stderr, done.stderr  # stopped cleanly, not killed
    assert "Traceback" not in done.stderr, done.stderr
    assert time.monotonic() - began < 30
    # Its lock was released and its connection closed: a new thread syncs the file at once.
    sync = SyncThread(tmp_path / "a.db", relay.url, store="s", token=relay.token("s"))
    with sync:
        assert sync.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED


def test_the_thread_keeps_no_database_connection_of_the_apps(tmp_path: Path) -> None:
    db = crsync.connect(tmp_path / "a.db")
    db.conn.execute(TODOS)
    db.track("todos")
    sync = SyncThread(db, f"ws://127.0.0.1:{free_port()}", store="s")
    assert sync.path == db.path and sync.status.state is PeerState.STOPPED
    db.close()


def test_a_callback_may_stop_the_thread_it_runs_on(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    sync = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    answers: list[bool] = []

    def stop_when_synced(status: SyncStatus) -> None:
        if status.state is PeerState.SYNCED:
            answers.append(sync.stop())  # on the sync thread: asks, cannot join itself

    sync.on_state(stop_when_synced)
    sync.start()
    assert sync.wait_state(PeerState.STOPPED, timeout=TIMEOUT) is PeerState.STOPPED
    assert sync.stop(TIMEOUT) and answers == [False]


def test_start_and_stop_racing_from_several_threads_leave_one_clean_end(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    sync = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            for _ in range(5):
                sync.start()
                sync.notify()
                sync.stop(TIMEOUT)
        except BaseException as exc:  # any exception is the failure this test looks for
            errors.append(exc)

    workers = [threading.Thread(target=churn) for _ in range(3)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(TIMEOUT * 2)
    assert not any(t.is_alive() for t in workers)
    assert errors == []
    assert sync.stop(TIMEOUT) and sync.status.state is PeerState.STOPPED
    # The lock is free and the file still syncs.
    other = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    other.start()
    assert other.wait_synced(TIMEOUT)


def test_a_file_locked_by_the_app_at_start_shows_offline_then_syncs_when_released(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    path = tmp_path / "a.db"
    app = sqlite3.connect(path, isolation_level=None)  # a plain file crsync has not opened yet
    app.execute(TODOS)
    app.execute("BEGIN EXCLUSIVE")  # the app holds the file: crsync cannot even read it
    sync = threads(path, relay.url, token=relay.token("s"), busy_timeout=0.1)
    sync.start()
    try:
        # Within a few busy_timeouts, not the default 10 s wait for the lock.
        assert sync.wait_state(PeerState.OFFLINE, timeout=5) is PeerState.OFFLINE
        assert "database is locked" in (sync.reason or ""), sync.status
        assert sync.running
    finally:
        app.execute("COMMIT")
        app.close()
    assert sync.wait_synced(TIMEOUT)
    assert sync.status == SyncStatus(PeerState.SYNCED)


def test_a_callback_may_start_the_thread_again_once_it_stopped(
    tmp_path: Path, relay: RelayProcess, threads: Callable[..., SyncThread]
) -> None:
    open_db(tmp_path / "a.db").close()
    sync = threads(tmp_path / "a.db", relay.url, token=relay.token("s"))
    restarts: list[SyncStatus] = []

    def restart_once(status: SyncStatus) -> None:
        if status.state is PeerState.STOPPED and not restarts:
            restarts.append(status)
            sync.start()  # on the ending thread, after its loop released everything

    sync.start()
    assert sync.wait_synced(TIMEOUT)
    sync.on_state(restart_once)
    assert sync.stop(TIMEOUT)
    assert sync.wait_state(PeerState.SYNCED, timeout=TIMEOUT) is PeerState.SYNCED
    assert restarts and sync.running
