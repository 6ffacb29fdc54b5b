"""Per-store and per-process limits: connection caps (``--max-connections-per-store``,
``--max-connections``), the byte quota (``--max-store-bytes``) and the push rate
(``--max-push-cells-per-second``).

A store at its connection cap refuses further connections with ``overloaded`` (peers retry with
backoff) while another store on the same relay keeps syncing at full speed; the process-wide cap
counts every connection, authenticated or not. Freed slots are used again. A store over its byte
quota refuses pushes with ``quota_exceeded`` (the pushing peer stops with a clear error, nothing
of the refused push is stored, pulls still work, other stores are unaffected). A store at its
push rate is slowed down (its acks wait), never refused, and does not slow other stores.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import eventually, open_db, rows, ws_client

from crsync.errors import ProtocolError
from crsync.peer import Peer, PeerState

from .conftest import RelayFactory

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

OPTS: dict[str, Any] = {"backoff_initial": 0.02, "backoff_max": 0.1}


async def test_store_at_its_connection_cap_refuses_more_and_does_not_slow_other_stores(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay: RelayProcess = relay_factory("--max-connections-per-store", "3")
    busy = [open_db(tmp_path / f"busy{i}.db") for i in range(4)]
    calm = [open_db(tmp_path / f"calm{i}.db") for i in range(2)]
    leave = anyio.Event()

    async def first_peer(*, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with Peer(busy[0], relay.url, store="busy", token=tb, **OPTS) as peer:
            task_status.started(peer)
            await leave.wait()

    tb, tc = relay.token("busy"), relay.token("calm")
    with anyio.fail_after(60):
        async with anyio.create_task_group() as nursery, contextlib.AsyncExitStack() as stack:
            full = [await nursery.start(first_peer)]
            full += [
                await stack.enter_async_context(Peer(db, relay.url, store="busy", token=tb, **OPTS))
                for db in busy[1:3]
            ]
            for peer in full:
                await peer.wait_state(PeerState.SYNCED)
            extra = await stack.enter_async_context(
                Peer(busy[3], relay.url, store="busy", token=tb, **OPTS)
            )
            await eventually(lambda: relay.count(r"code=overloaded") >= 5, "refusals")
            assert extra.stats.connects == 0
            assert extra.stats.last_error is not None and "overloaded" in extra.stats.last_error
            # the other store is not held up by the refusals hammering the busy one
            c1, c2 = [
                await stack.enter_async_context(Peer(db, relay.url, store="calm", token=tc, **OPTS))
                for db in calm
            ]
            for i in range(10):
                with anyio.fail_after(2):
                    calm[0].conn.execute("INSERT INTO todos (id, title) VALUES (?, 'c')", (str(i),))
                    await c1.wait_synced()
                    await c2.wait_synced()
            assert len(rows(calm[1])) == 10
            assert extra.stats.connects == 0
            # a slot frees up: the waiting peer gets in and syncs
            busy[0].conn.execute("INSERT INTO todos (id, title) VALUES ('b', 'b')")
            await full[0].wait_synced()
            leave.set()
            await extra.wait_synced()
            assert ("b", "b", 0, None) in rows(busy[3])
            assert extra.stats.connects == 1


async def test_connections_still_authenticating_have_their_own_cap(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    """Idle sockets that never say hello fill --max-unauthenticated (not the authenticated
    cap); a device is refused with overloaded while they are there and gets in after."""
    relay: RelayProcess = relay_factory("--max-unauthenticated", "4")
    db = open_db(tmp_path / "a.db")
    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            release = anyio.Event()
            opened = anyio.Semaphore(0)

            async def lurker() -> None:  # connected, never says hello
                async with ws_client(relay.url, proxy=None) as ws:
                    await ws.ping()
                    opened.release()
                    await release.wait()

            for _ in range(4):
                nursery.start_soon(lurker)
            for _ in range(4):
                await opened.acquire()
            async with Peer(db, relay.url, store="s", token=relay.token("s"), **OPTS) as peer:
                await eventually(lambda: relay.count(r"code=overloaded") >= 3, "refusals")
                assert peer.stats.connects == 0
                release.set()
                await peer.wait_synced()
                assert peer.stats.connects == 1


def _relay_rows(relay: RelayProcess, store: str) -> int:
    """Rows (distinct primary keys) of ``todos`` the relay holds for a store."""
    conn = sqlite3.connect(relay.store_path(store))
    try:
        return int(
            conn.execute(
                "SELECT count(DISTINCT pk) FROM relay_cells WHERE tbl = 'todos'"
            ).fetchone()[0]
        )
    finally:
        conn.close()


def _relay_bytes(relay: RelayProcess, store: str) -> int:
    """Size of a relay store's database (pages x page size, WAL content included)."""
    conn = sqlite3.connect(relay.store_path(store))
    try:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages) * int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


async def test_store_over_its_byte_quota_refuses_pushes_with_quota_exceeded(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    quota = 150_000
    relay: RelayProcess = relay_factory("--max-store-bytes", str(quota))
    writer_db, reader_db = open_db(tmp_path / "w.db"), open_db(tmp_path / "r.db")
    calm = [open_db(tmp_path / f"calm{i}.db") for i in range(2)]
    tf, tc = relay.token("full"), relay.token("calm")
    with anyio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            writer = await stack.enter_async_context(
                Peer(writer_db, relay.url, store="full", token=tf, **OPTS)
            )
            # one transaction of 40 rows of 8 KB: accepted (the store was under its quota)
            with writer_db.conn:
                writer_db.conn.executemany(
                    "INSERT INTO todos (id, title, data) VALUES (?, 't', ?)",
                    [(f"r{i:02}", bytes(8192)) for i in range(40)],
                )
            await writer.wait_synced()
            assert _relay_bytes(relay, "full") > quota
            # the next push is refused: the peer stops with a clear error
            writer_db.conn.execute("INSERT INTO todos (id, title) VALUES ('late', 'x')")
            with pytest.raises(ProtocolError, match="quota_exceeded") as info:
                await writer.wait_synced()
            assert writer.state is PeerState.ERROR
            message = str(info.value)
            assert f"quota of {quota} bytes" in message and "'full'" in message
            assert writer.stats.last_error == message
            assert relay.wait_for(r"code=quota_exceeded") == 1
            # nothing of the refused push was stored; a device that only pulls still syncs
            assert _relay_rows(relay, "full") == 40
            reader = await stack.enter_async_context(
                Peer(reader_db, relay.url, store="full", token=tf, **OPTS)
            )
            await reader.wait_synced()
            assert reader.state is PeerState.SYNCED
            got = rows(reader_db)
            assert len(got) == 40 and all(r[0] != "late" for r in got)
            # another store on the same relay is unaffected
            c1, c2 = [
                await stack.enter_async_context(Peer(db, relay.url, store="calm", token=tc, **OPTS))
                for db in calm
            ]
            for i in range(5):
                with anyio.fail_after(2):
                    calm[0].conn.execute("INSERT INTO todos (id, title) VALUES (?, 'c')", (str(i),))
                    await c1.wait_synced()
                    await c2.wait_synced()
            assert len(rows(calm[1])) == 5
            assert _relay_bytes(relay, "calm") < quota
            assert _relay_rows(relay, "full") == 40


async def test_store_at_its_push_rate_is_throttled_without_slowing_other_stores(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    rate = 250  # cells per second per store; the bucket holds one second of cells
    relay: RelayProcess = relay_factory("--max-push-cells-per-second", str(rate))
    slow_db, slow_reader_db = open_db(tmp_path / "s.db"), open_db(tmp_path / "s2.db")
    calm = [open_db(tmp_path / f"calm{i}.db") for i in range(2)]
    with slow_db.conn:
        slow_db.conn.executemany(
            "INSERT INTO todos (id, title) VALUES (?, 't')", [(f"r{i:03}",) for i in range(350)]
        )
    cells = len(slow_db.changes(0))
    # the first second of cells passes at once, the rest waits for tokens
    floor = cells / rate - 1.0
    assert floor >= 2.5
    ts, tc = relay.token("slow"), relay.token("calm")
    slow_done = anyio.Event()
    timings: dict[str, float] = {}

    async def push_slow(peer: Peer, started: float) -> None:
        await peer.wait_synced()
        timings["slow"] = anyio.current_time() - started
        slow_done.set()

    with anyio.fail_after(60):
        async with contextlib.AsyncExitStack() as stack:
            c1, c2 = [
                await stack.enter_async_context(Peer(db, relay.url, store="calm", token=tc, **OPTS))
                for db in calm
            ]
            await c1.wait_synced()
            await c2.wait_synced()
            slow_reader = await stack.enter_async_context(
                Peer(slow_reader_db, relay.url, store="slow", token=ts, **OPTS)
            )
            await slow_reader.wait_synced()
            started = anyio.current_time()
            async with (
                Peer(slow_db, relay.url, store="slow", token=ts, **OPTS) as slow,
                anyio.create_task_group() as nursery,
            ):
                nursery.start_soon(push_slow, slow, started)
                # the calm store syncs promptly while the slow store's push is held back
                await eventually(lambda: relay.count(r"relay\.connect store=slow") >= 2, "push")
                calm_started = anyio.current_time()
                for i in range(5):
                    calm[0].conn.execute("INSERT INTO todos (id, title) VALUES (?, 'c')", (str(i),))
                    await c1.wait_synced()
                    await c2.wait_synced()
                timings["calm"] = anyio.current_time() - calm_started
                assert not slow_done.is_set(), timings
                assert len(rows(calm[1])) == 5
            assert timings["slow"] >= floor, timings
            assert timings["calm"] < floor, timings
            await slow_reader.wait_synced()
            assert len(rows(slow_reader_db)) == 350
