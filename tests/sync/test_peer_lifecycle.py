"""A Peer's life in a real app: cancelled from outside at any await, a locked database, relay
URLs that cannot work, the sync lock and who holds it. Real relay processes, real sockets on
127.0.0.1, real files; what is checked is what the app (or the OS) can see."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
import types
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import trustme

import crsync
from crsync.errors import (
    ConnectError,
    CrsyncError,
    PeerFailedError,
    PeerStoppedError,
    RelayURLError,
    SyncTimeoutError,
)
from crsync.peer import Peer, PeerState

from .conftest import RelayFactory, RelayProcess
from .helpers import eventually, open_db, rows, ws_close, ws_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

FAST = {"backoff_initial": 0.05, "backoff_max": 0.3}
LINUX = sys.platform.startswith("linux")


# ---------------------------------------------------------------------------- what the OS sees


def _fd_targets() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # closed while listing
    return out


def _inotify_count() -> int:
    return sum(1 for t in _fd_targets() if t == "anon_inode:inotify")


def _threads_in_watch() -> int:
    """Threads now watching files: crsync's file watcher threads (alive from the first
    subscriber of a file to the last), and any other thread inside ``watchfiles``' loop around
    ``RustNotify.watch`` (its blocking wait for file events), which holds the OS watch."""
    watchers = {t.ident for t in threading.enumerate() if t.name.startswith("crsync.watcher:")}
    n = 0
    for ident, frame in sys._current_frames().items():
        f: types.FrameType | None = frame
        while f is not None and ident not in watchers:
            if any(
                type(v).__name__ == "RustNotify"
                or (
                    getattr(v, "__name__", None) == "watch"
                    and type(getattr(v, "__self__", None)).__name__ == "RustNotify"
                )
                for v in f.f_locals.values()
            ):
                n += 1
                break
            f = f.f_back
    return n + len(watchers)


def _wait_for(pred: Callable[[], bool], limit: float = 2.0) -> bool:
    deadline = time.monotonic() + limit
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # polls an OS-level effect on another thread (bounded)
    return True


class Baseline:
    """What the process holds before any Peer runs: the app's own connection to the file
    (its descriptors on the database, WAL and shared memory) and other tests' file watches."""

    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.files = self._files()
        self.inotify = _inotify_count() if LINUX else 0
        self.watching = _threads_in_watch()

    def _files(self) -> list[str]:
        if not LINUX:
            return []
        return sorted(t for t in _fd_targets() if t.startswith(str(self.db_path)))


def assert_released(base: Baseline, lock: bool = True) -> None:
    """No descriptor on the database, its WAL or its sync lock beyond the app's own; no file
    watch left behind; and the sync lock is free (another holder can take it at once)."""
    if LINUX:
        now, main = base._files(), str(base.db_path)
        # A closed connection's descriptor on the main file can stay open: SQLite defers that
        # close while other connections of the process hold POSIX locks on the file (closing it
        # would drop their locks) and reuses it for the next connection (see
        # test_descriptors_do_not_pile_up). The WAL's descriptor closes with the connection,
        # and the lock file's with the lock.
        assert [f for f in now if f != main] == [f for f in base.files if f != main], (
            f"the peer's connection or lock file is still open: {now} (before: {base.files})"
        )
    assert _threads_in_watch() <= base.watching, "the file watcher's thread is still running"
    if LINUX:
        # The OS watch itself is closed by the notify library's own event thread right after
        # the watcher is dropped (within a millisecond); not synchronously, hence the wait.
        assert _wait_for(lambda: _inotify_count() == base.inotify), "a file watch is left open"
    if not lock:
        return
    from crsync._sync_lock import SyncLock

    probe = SyncLock(str(base.db_path) + ".crsync-sync.lock")
    assert probe.try_acquire(), "the sync lock is still held"
    probe.release()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


@asynccontextmanager
async def silent_tcp_server() -> AsyncIterator[tuple[int, anyio.Event]]:
    """Accepts connections and never answers (a relay hanging in the HTTP handshake)."""
    accepted = anyio.Event()
    streams: list[anyio.abc.SocketStream] = []

    async def handler(stream: anyio.abc.SocketStream) -> None:
        streams.append(stream)
        accepted.set()
        await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handler)
        yield listener.extra(anyio.abc.SocketAttribute.local_port), accepted
        tg.cancel_scope.cancel()


@asynccontextmanager
async def mute_relay() -> AsyncIterator[tuple[int, anyio.Event]]:
    """Completes the WebSocket handshake, reads the hello and never welcomes."""
    hello = anyio.Event()

    async def handler(ws: Any) -> None:
        await ws.recv()
        hello.set()
        await ws.wait_closed()

    async with ws_server(handler) as port:
        yield port, hello


def _app_db(tmp_path: Path) -> tuple[crsync.Database, Path]:
    path = tmp_path / "app.db"
    db = open_db(path)
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'kept')")
    return db, path


async def _fresh_peer_syncs(db: crsync.Database, relay: RelayProcess, store: str) -> Peer:
    with anyio.fail_after(20):
        async with Peer(db, relay.url, store=store, token=relay.token(store), **FAST) as p:  # type: ignore[arg-type]
            await p.wait_synced()
            await p.wait_state(PeerState.SYNCED)
            assert p.stats.connects == 1
    return p


# ---------------------------------------------------------------------------- cancellation


async def test_cancelled_while_the_relay_is_down_releases_everything_every_time(
    relay: RelayProcess, tmp_path: Path
) -> None:
    db, path = _app_db(tmp_path)
    down = f"ws://127.0.0.1:{_closed_port()}"
    base = Baseline(path)
    async with Peer(db, down, store="s", **FAST) as p:  # type: ignore[arg-type]
        # The check below can see a running watcher (so it can fail).
        await anyio.to_thread.run_sync(lambda: _wait_for(lambda: _threads_in_watch() == 1, 10))
        assert _threads_in_watch() == 1
    for _ in range(5):
        with anyio.move_on_after(0.3) as cs:
            async with Peer(db, down, store="s", **FAST) as p:  # type: ignore[arg-type]
                await p.wait_synced()
        assert cs.cancelled_caught
        assert p.state is PeerState.STOPPED
        assert_released(base)
    await _fresh_peer_syncs(db, relay, "s")


async def test_cancelled_at_each_await_of_the_lifecycle_then_a_fresh_peer_syncs(
    relay: RelayProcess, tmp_path: Path
) -> None:
    db, path = _app_db(tmp_path)
    db.conn.executemany(
        "INSERT INTO todos (id, title, data) VALUES (?, 'bulk', randomblob(200))",
        [(f"b{i}",) for i in range(3000)],
    )
    tok = relay.token("s")
    base = Baseline(path)

    def peer(url: str = relay.url) -> Peer:
        return Peer(db, url, store="s", token=tok, **FAST)  # type: ignore[arg-type]

    async def cancelled_when(
        url: str, reached: Callable[[Peer], object], baseline: Baseline = base, lock: bool = True
    ) -> None:
        with anyio.fail_after(20), anyio.CancelScope() as cs:
            async with peer(url) as p:
                await reached(p)  # type: ignore[misc]
                cs.cancel()
                await p.wait_synced()
        assert cs.cancelled_caught
        assert_released(baseline, lock=lock)

    for _round in range(3):
        # aenter: already cancelled when entering (the connection is never opened) ...
        with anyio.CancelScope() as cs:
            cs.cancel()
            async with peer():
                pytest.fail("the body runs inside a cancelled scope")  # pragma: no cover
        assert_released(base)
        # ... and deadlines falling in the connect thread, the election, the first connection.
        for delay in (0, 0.0005, 0.002, 0.005, 0.01, 0.02, 0.05):
            with anyio.move_on_after(delay):
                async with peer() as p:
                    await p.wait_synced()
            assert_released(base)

        # elect/standby: another Peer on the file holds the sync lock.
        async with Peer(
            db, f"ws://127.0.0.1:{_closed_port()}", store="s", watch_files=False
        ) as holder:
            await holder.wait_state(PeerState.OFFLINE)  # elected, connection open
            with_holder = Baseline(path)
            await cancelled_when(
                relay.url, lambda p: p.wait_state(PeerState.STANDBY), with_holder, lock=False
            )
            assert holder.state is not PeerState.STOPPED
        assert_released(base)

        # connecting: the relay accepts TCP and never answers the HTTP upgrade.
        async with silent_tcp_server() as (port, accepted):
            await cancelled_when(f"ws://127.0.0.1:{port}", lambda p: accepted.wait())
        # handshake: the WebSocket is open, the relay never answers the hello.
        async with mute_relay() as (port, hello):
            await cancelled_when(f"ws://127.0.0.1:{port}", lambda p: hello.wait())

        # syncing: in the middle of pushing the bulk rows (a fresh store each round).
        store_round = f"s{_round}"
        with anyio.fail_after(20), anyio.CancelScope() as cs:
            async with Peer(
                db, relay.url, store=store_round, token=relay.token(store_round), **FAST
            ) as p:  # type: ignore[arg-type]
                await p.wait_state(PeerState.SYNCING)
                cs.cancel()
                await p.wait_synced()
        assert cs.cancelled_caught
        assert_released(base)

        # wait_synced: cancelled while waiting on a connected peer.
        with anyio.fail_after(20), anyio.CancelScope() as cs:
            async with peer() as p:
                await p.wait_state(PeerState.SYNCING, PeerState.SYNCED)

                async def cancel_soon(scope: anyio.CancelScope = cs) -> None:
                    await anyio.lowlevel.checkpoint()
                    scope.cancel()

                async with anyio.create_task_group() as n:
                    n.start_soon(cancel_soon)
                    await p.wait_synced()
        assert_released(base)

        # aexit: the body is done, the exit runs with a cancellation pending.
        with anyio.fail_after(20), anyio.CancelScope() as cs:
            async with peer() as p:
                await p.wait_state(PeerState.SYNCING, PeerState.SYNCED)
                cs.cancel()
        assert p.state is PeerState.STOPPED
        assert_released(base)

    await _fresh_peer_syncs(db, relay, "s")
    if LINUX:
        # At most two peers ran at once (holder and standby): SQLite keeps at most that many
        # closed descriptors for reuse, however many peers came and went.
        main = str(path)
        assert base._files().count(main) <= base.files.count(main) + 2


async def test_one_file_watch_serves_every_peer_and_live_query_of_the_file(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Two Peers (no sync lock: both sync, both watch) and two live queries on one file share
    one watcher thread and one OS watch; a write by another connection reaches all four; the
    watch is gone when the last of them leaves."""
    import sqlite3

    from crsync import watcher

    db, path = _app_db(tmp_path)
    real = str(path.resolve())
    base = Baseline(path)
    opts: dict[str, Any] = {"sync_lock": False, **FAST}
    with anyio.fail_after(30):
        async with (
            Peer(db, relay.url, store="a", token=relay.token("a"), **opts) as pa,
            Peer(db, relay.url, store="b", token=relay.token("b"), **opts) as pb,
            db.watch("SELECT count(*) FROM todos") as count,
            db.watch("SELECT title FROM todos ORDER BY id") as titles,
        ):
            assert await count.__anext__() == [(1,)]
            assert await titles.__anext__() == [("kept",)]
            await pa.wait_synced()
            await pb.wait_synced()
            await eventually(lambda: _threads_in_watch() > base.watching, "a file watcher")
            assert _threads_in_watch() == base.watching + 1
            assert watcher.watched_files() == [real]
            if LINUX:
                assert _inotify_count() == base.inotify + 1
            pushed = pa.stats.pushed_changes, pb.stats.pushed_changes
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("INSERT INTO todos (id, title) VALUES ('2', 'elsewhere')")
            other.close()
            assert await count.__anext__() == [(2,)]
            assert await titles.__anext__() == [("kept",), ("elsewhere",)]
            # No notify(): each peer noticed the other connection's commit on its own.
            await eventually(
                lambda: pa.stats.pushed_changes > pushed[0] and pb.stats.pushed_changes > pushed[1],
                "both peers pushing the other connection's write",
            )
            assert _threads_in_watch() == base.watching + 1
    assert real not in watcher.watched_files()
    assert_released(base)


async def test_a_stopped_peer_raises_instead_of_waiting_forever(tmp_path: Path) -> None:
    db, _ = _app_db(tmp_path)
    p = Peer(db, f"ws://127.0.0.1:{_closed_port()}", store="s")
    with anyio.fail_after(5):
        with pytest.raises(PeerStoppedError):
            await p.wait_synced()
        async with p:
            pass
        with pytest.raises(PeerStoppedError):
            await p.wait_state(PeerState.SYNCED)


# ---------------------------------------------------------------------------- the sync lock


async def test_standby_names_the_lock_file_and_takes_over_when_it_is_released(
    relay: RelayProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db, path = _app_db(tmp_path)
    tok = relay.token("s")
    lock = str(path) + ".crsync-sync.lock"
    caplog.set_level(logging.INFO, logger="crsync.peer")
    release = anyio.Event()
    second_standby = anyio.Event()

    async def first_syncer(
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        async with Peer(db, relay.url, store="s", token=tok, **FAST) as first:  # type: ignore[arg-type]
            await first.wait_synced()
            task_status.started()
            await release.wait()

    with anyio.fail_after(20):
        async with anyio.create_task_group() as nursery:
            await nursery.start(first_syncer)
            async with Peer(db, relay.url, store="s", token=tok, **FAST) as second:  # type: ignore[arg-type]
                assert await second.wait_state(PeerState.STANDBY) is PeerState.STANDBY
                second_standby.set()
                assert second.lock_path == lock
                assert second.reason is not None and lock in second.reason
                assert any(
                    lock in r.getMessage() for r in caplog.records if "standby" in r.getMessage()
                )
                with pytest.raises(SyncTimeoutError, match="standby") as info:
                    await second.wait_synced(timeout=0.3)
                assert lock in str(info.value)
                assert info.value.state == "standby"
                release.set()  # the first peer leaves: the second takes over
                await second.wait_synced(timeout=15)
                await second.wait_state(PeerState.SYNCED)
                assert second.reason is None


# ---------------------------------------------------------------------------- a locked file


async def test_a_database_locked_past_the_busy_timeout_is_retried_not_fatal(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a = open_db(tmp_path / "a.db")
    b = open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'from a')")
    tok = relay.token("s")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="s", token=tok, **FAST) as pa:  # type: ignore[arg-type]
            await pa.wait_synced()
        # The app holds a write transaction on b far longer than the peer's busy timeout.
        b.conn.execute("BEGIN IMMEDIATE")
        b.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'from b')")
        async with Peer(
            b,
            relay.url,
            store="s",
            token=tok,
            busy_timeout=0.1,
            **FAST,  # type: ignore[arg-type]
        ) as pb:
            await pb.wait_state(PeerState.OFFLINE)
            assert pb.reason is not None and "locked" in pb.reason, pb.reason
            assert pb.stats.last_error is not None and "SQLITE_BUSY" in pb.stats.last_error
            # Still retrying a while later, never stopped.
            seen = pb.stats.retries
            await eventually(lambda: pb.stats.retries >= seen + 3, "three more retries")
            assert pb.error is None
            assert pb.state is PeerState.OFFLINE
            with pytest.raises(SyncTimeoutError, match="locked"):
                await pb.wait_synced(timeout=0.5)
            b.conn.execute("COMMIT")
            await pb.wait_synced(timeout=20)
            await pb.wait_state(PeerState.SYNCED)
            assert pb.reason is None
            # Connected and synced: now a merge meets the app's write lock.
            async with Peer(a, relay.url, store="s", token=tok, **FAST) as pa:  # type: ignore[arg-type]
                await pa.wait_synced()
                b.conn.execute("BEGIN IMMEDIATE")
                b.conn.execute("UPDATE todos SET done = 1 WHERE id = '2'")
                a.conn.execute("INSERT INTO todos (id, title) VALUES ('3', 'while b is locked')")
                pa.notify()
                await pa.wait_synced()
                await pb.wait_state(PeerState.OFFLINE)
                assert pb.reason is not None and "locked" in pb.reason, pb.reason
                assert pb.error is None
                b.conn.execute("COMMIT")
                await pb.wait_synced(timeout=20)
                await pa.wait_synced(timeout=20)
    assert (
        rows(a)
        == rows(b)
        == [
            ("1", "from a", 0, None),
            ("2", "from b", 1, None),
            ("3", "while b is locked", 0, None),
        ]
    )


async def test_wait_synced_called_while_the_app_holds_the_lock_waits_then_succeeds(
    relay: RelayProcess, tmp_path: Path
) -> None:
    db, _ = _app_db(tmp_path)
    tok = relay.token("s")
    with anyio.fail_after(30):
        async with Peer(db, relay.url, store="s", token=tok, busy_timeout=0.05, **FAST) as p:  # type: ignore[arg-type]
            await p.wait_synced()
            db.conn.execute("BEGIN IMMEDIATE")
            db.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'late')")
            async with anyio.create_task_group() as n:

                async def commit_later() -> None:
                    await p.wait_state(PeerState.OFFLINE)
                    db.conn.execute("COMMIT")

                n.start_soon(commit_later)
                p.notify()
                await p.wait_synced()
            assert p.error is None


# ---------------------------------------------------------------------------- errors the app sees


async def test_an_exception_in_on_progress_stops_the_peer_with_a_crsync_error(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
    tok = relay.token("s")

    def broken(done: int, total: int) -> None:
        raise ValueError("bug in the app's callback")

    with anyio.fail_after(20):
        async with Peer(a, relay.url, store="s", token=tok, **FAST) as pa:  # type: ignore[arg-type]
            await pa.wait_synced()
        async with Peer(b, relay.url, store="s", token=tok, on_progress=broken, **FAST) as pb:  # type: ignore[arg-type]
            with pytest.raises(PeerFailedError, match="bug in the app's callback") as info:
                await pb.wait_synced()
        assert isinstance(info.value.__cause__, ValueError)
        assert pb.state is PeerState.ERROR


@pytest.mark.parametrize(
    "url",
    [
        "ws://127.0.0.1:notaport",
        "ws://127.0.0.1:8765 ",
        " ws://127.0.0.1:8765",
        "ws://127.0.0.1:99999",
        "ws://127.0.0.1:0",
        "ws://:8765",
        "ws://re lay:8765",
        "http://127.0.0.1:8765",
    ],
)
def test_a_relay_url_that_cannot_work_is_refused_at_once(tmp_path: Path, url: str) -> None:
    db, _ = _app_db(tmp_path)
    with pytest.raises(RelayURLError, match="relay URL") as info:
        Peer(db, url, store="s")
    assert repr(url) in str(info.value) or url.strip() in str(info.value)


@pytest.mark.parametrize(
    "store,token", [("a\ud800", None), ("s", "tok\udcff"), (b"s", None), ("s", b"tok")]
)
def test_store_and_token_that_are_not_text_are_refused_at_once(
    tmp_path: Path, store: object, token: object
) -> None:
    db, _ = _app_db(tmp_path)
    with pytest.raises(CrsyncError, match=r"not valid text|must be a string"):
        Peer(db, "ws://127.0.0.1:1", store=store, token=token)  # type: ignore[arg-type]


async def test_a_host_that_can_never_resolve_stops_the_peer_at_once(tmp_path: Path) -> None:
    db, _ = _app_db(tmp_path)
    start = time.monotonic()
    with anyio.fail_after(20):
        async with Peer(db, "ws://relay.crsync.invalid:8765", store="s", **FAST) as p:  # type: ignore[arg-type]
            with pytest.raises(ConnectError, match=r"relay host 'relay\.crsync\.invalid'"):
                await p.wait_synced()
    assert p.state is PeerState.ERROR
    assert p.stats.connects == 0
    assert time.monotonic() - start < 10


def _tls_relay(relay_factory: RelayFactory, tmp_path: Path) -> tuple[RelayProcess, trustme.CA]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    relay = relay_factory("--tls-cert", str(cert_file), "--tls-key", str(key_file), dev=True)
    return relay, ca


async def test_a_certificate_that_does_not_verify_stops_the_peer_with_the_reason(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay, _ca = _tls_relay(relay_factory, tmp_path)
    db, _ = _app_db(tmp_path)
    untrusting = ssl.create_default_context()  # does not know the test CA
    with anyio.fail_after(20):
        async with Peer(
            db, f"wss://localhost:{relay.port}", store="s", ssl=untrusting, **FAST
        ) as p:  # type: ignore[arg-type]
            with pytest.raises(ConnectError, match="does not verify"):
                await p.wait_synced()
    assert p.state is PeerState.ERROR
    assert p.reason is not None and "certificate" in p.reason


async def test_wss_to_a_relay_without_tls_stops_the_peer_with_the_reason(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory(dev=True)
    db, _ = _app_db(tmp_path)
    with anyio.fail_after(20):
        async with Peer(db, f"wss://127.0.0.1:{relay.port}", store="s", **FAST) as p:  # type: ignore[arg-type]
            with pytest.raises(ConnectError, match="does not speak TLS"):
                await p.wait_synced()
    assert p.state is PeerState.ERROR


async def test_an_unreachable_relay_is_retried_and_says_why(tmp_path: Path) -> None:
    db, _ = _app_db(tmp_path)
    with anyio.fail_after(20):
        async with Peer(db, f"ws://127.0.0.1:{_closed_port()}", store="s", **FAST) as p:  # type: ignore[arg-type]
            await p.wait_state(PeerState.OFFLINE)
            assert p.reason is not None and "refused" in p.reason.lower(), p.reason
            assert p.stats.last_error == p.reason
            with pytest.raises(SyncTimeoutError, match=r"offline|connecting") as info:
                await p.wait_synced(timeout=0.5)
            assert "refused" in str(info.value).lower()
            assert p.error is None


# ---------------------------------------------------------------------------- the relay's log


async def test_wait_for_sees_a_relay_log_line_written_after_the_call(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """The relay logs ``relay.connect`` after it sent the welcome: a peer can be synced before
    the line is even written. ``wait_for`` waits for the line (bounded), ``count`` does not."""
    db, _ = _app_db(tmp_path)
    seen: list[int] = []

    def watch_log() -> None:
        seen.append(relay.wait_for(r"relay\.connect store=logged", 1, timeout=20))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            nursery.start_soon(anyio.to_thread.run_sync, watch_log)
            async with Peer(
                db, relay.url, store="logged", token=relay.token("logged"), **FAST
            ) as p:  # type: ignore[arg-type]
                await p.wait_synced()
    assert seen == [1]
    with pytest.raises(AssertionError, match="not seen after"):
        relay.wait_for(r"relay\.connect store=never", 1, timeout=0.2)


# ---------------------------------------------------------------------------- failing together


@pytest.mark.parametrize("fatal_first", [True, False])
async def test_the_most_telling_error_wins_whichever_task_failed_first(
    tmp_path: Path, fatal_first: bool
) -> None:
    """The peer's pusher and receiver fail together (the relay refuses, the socket closes):
    the peer stops on the refusal whatever the order, and what caused each error survives
    the flattening (a busy file stays recognisable as one)."""
    import sqlite3

    from crsync import AuthError
    from crsync._async_util import open_task_group
    from crsync._sqlite_errors import sqlite_cause
    from crsync.peer import _Fatal

    db, _ = _app_db(tmp_path)
    peer = Peer(db, "ws://127.0.0.1:1", store="s")
    order = [anyio.Event(), anyio.Event()]

    async def fail(i: int, exc: Exception) -> None:
        if i:
            # Shielded: the first failure cancels the nursery, and this one must still fail
            # (second) rather than be cancelled.
            with anyio.CancelScope(shield=True):
                await order[i - 1].wait()
        try:
            raise exc
        finally:
            order[i].set()

    refused = _Fatal(AuthError("relay refused the token (forbidden)"))
    lost = ConnectionResetError("connection lost")
    first, second = (refused, lost) if fatal_first else (lost, refused)
    with pytest.raises(_Fatal) as info:
        async with open_task_group(peer._rank) as nursery:
            nursery.start_soon(fail, 0, first)
            nursery.start_soon(fail, 1, second)
    assert info.value is refused

    # Flattening keeps what caused the error: a busy file behind a CrsyncError stays one
    # (and is retried, not fatal), while the other task is cancelled.
    busy = sqlite3.OperationalError("database is locked")
    try:
        raise busy
    except sqlite3.OperationalError as e:
        try:
            raise CrsyncError("cannot start a write transaction: database is locked") from e
        except CrsyncError as wrapped:
            local = wrapped

    async def raise_local() -> None:
        raise local

    with pytest.raises(CrsyncError) as info2:
        async with open_task_group(peer._rank) as nursery:
            nursery.start_soon(anyio.sleep_forever)
            nursery.start_soon(raise_local)
    assert info2.value is local
    assert sqlite_cause(info2.value) is busy


@pytest.mark.parametrize("how", ["frame", "frame-after-push", "close-frame-only"])
async def test_a_refusal_is_the_outcome_even_when_the_relay_closed_before_it_was_read(
    tmp_path: Path, how: str
) -> None:
    """A relay refusing a push sends an error frame and closes. The Peer's send may fail on
    the closed connection first: the refusal (fatal) must win over the closing (retryable),
    or the device reconnects and pushes again (seen as two quota_exceeded refusals)."""
    from crsync import protocol as p

    connections = 0

    async def handler(ws: Any) -> None:
        nonlocal connections
        connections += 1
        hello = p.decode(await ws.recv())
        assert isinstance(hello, p.Hello)
        await ws.send(p.encode(p.Welcome(1, "epoch", 0, 0)))
        if how == "frame-after-push":
            await ws.recv()  # the push
        if how != "close-frame-only":
            await ws.send(p.encode(p.Error("quota_exceeded", "store 's' is over its quota")))
        # the refusal's code is also the close frame's reason (what a relay does)
        await ws_close(ws, 1008, "quota_exceeded")

    db, _path = _app_db(tmp_path)
    async with ws_server(handler) as port:
        with anyio.fail_after(20):
            async with Peer(db, f"ws://127.0.0.1:{port}", store="s", **FAST) as peer:  # type: ignore[arg-type]
                await peer.wait_state(PeerState.ERROR)
                assert peer.error is not None and "quota_exceeded" in str(peer.error)
    assert connections == 1
