"""Connection caps: ``--max-connections-per-store`` and ``--max-connections``.

A store at its cap refuses further connections with ``overloaded`` (peers retry with backoff)
while another store on the same relay keeps syncing at full speed; the process-wide cap counts
every connection, authenticated or not. Freed slots are used again.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import trio
from sync.conftest import RelayProcess
from sync.helpers import eventually, open_db, rows
from websockets.trio.client import connect as ws_connect

from crsync.peer import Peer, PeerState

from .conftest import RelayFactory

pytestmark = pytest.mark.e2e

OPTS: dict[str, Any] = {"backoff_initial": 0.02, "backoff_max": 0.1}


async def test_store_at_its_connection_cap_refuses_more_and_does_not_slow_other_stores(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay: RelayProcess = relay_factory("--max-connections-per-store", "3")
    busy = [open_db(tmp_path / f"busy{i}.db") for i in range(4)]
    calm = [open_db(tmp_path / f"calm{i}.db") for i in range(2)]
    leave = trio.Event()

    async def first_peer(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with Peer(busy[0], relay.url, store="busy", token=tb, **OPTS) as peer:
            task_status.started(peer)
            await leave.wait()

    tb, tc = relay.token("busy"), relay.token("calm")
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery, contextlib.AsyncExitStack() as stack:
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
                with trio.fail_after(2):
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


async def test_process_connection_cap_counts_every_connection(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay: RelayProcess = relay_factory("--max-connections", "4")
    db = open_db(tmp_path / "a.db")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            release = trio.Event()
            opened = trio.Semaphore(0)

            async def lurker() -> None:  # connected, never says hello
                async with ws_connect(relay.url, proxy=None) as ws:
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
