"""The Peer and SyncThread with a relay announcing a horizon and counting what it sends: a
fake relay (a WebSocket server in the test's event loop) speaking the protocol's optional
fields (``welcome.horizon``, ``welcome.remaining``, ``pong.horizon``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

import crsync
from crsync import Change, positions
from crsync import protocol as p
from crsync.change import COLLECTED_SITE
from crsync.peer import Peer
from crsync.sync_thread import SyncThread

from .helpers import FAST, eventually, open_db, peer_messages, rows, ws_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _unit(tmp_path: Path) -> list[Change]:
    """Three rows created, one of them deleted (a tombstone), as one relay version."""
    src = open_db(tmp_path / "src.db")
    src.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [("a", "1"), ("b", "2"), ("c", "3")]
    )
    src.conn.execute("DELETE FROM todos WHERE id = 'b'")
    out = src.changes()
    src.close()
    return out


class HorizonRelay:
    """Welcomes with ``remaining`` and horizon 0, sends one unit (relay version 1), and
    answers each ping with a horizon one higher than the last."""

    def __init__(self, unit: list[Change]) -> None:
        self.unit = unit
        self.horizon = 0
        self.received: list[int] = []

    async def handler(self, ws: Any) -> None:
        p.decode(await ws.recv())
        await ws.send(p.encode(p.Welcome(1, "E", 1, 0, horizon=0, remaining=len(self.unit))))
        await ws.send(p.encode(p.Changes(0, 1, self.unit)))
        async for msg in peer_messages(ws):
            if isinstance(msg, p.Received):
                self.received.append(msg.upto)
            elif isinstance(msg, p.Ping):
                self.horizon += 1
                await ws.send(p.encode(p.Pong(msg.id, 1, self.horizon)))


async def test_the_peer_compacts_tombstones_once_the_horizon_passes_them(
    tmp_path: Path,
) -> None:
    unit = _unit(tmp_path)
    relay = HorizonRelay(unit)
    db = open_db(tmp_path / "d.db")
    progress: list[tuple[int, int]] = []
    async with ws_server(relay.handler) as port:
        with anyio.fail_after(20):
            async with Peer(
                db,
                f"ws://127.0.0.1:{port}",
                store="s",
                on_progress=lambda d, t: progress.append((d, t)),
                **FAST,  # type: ignore[arg-type]
            ) as peer:
                await peer.wait_synced()  # pong: horizon 1, passes the mark (pull 0)
                assert db.metadata_stats().tombstones == 1
                await peer.wait_synced()  # pong: horizon 2, passes the mark (pull 1)
                await eventually(lambda: peer.stats.compacted_tombstones == 1, "compaction")
    assert progress == [(len(unit), len(unit))]
    stats = db.metadata_stats()
    assert (stats.rows, stats.tombstones, stats.collected, stats.horizon) == (2, 0, 1, 2)
    assert rows(db) == [("a", "1", 0, None), ("c", "3", 0, None)]
    # The compacted row is out of the feed; the row it was can come back (cl 3).
    assert not [c for c in db.changes() if c.cl % 2 == 0]
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('b', 'again')")
    assert [c.cl for c in db.changes() if c.cid == "-1"] == [3]


async def test_sync_thread_status_shows_the_catch_up_progress(tmp_path: Path) -> None:
    unit = _unit(tmp_path)
    relay = HorizonRelay(unit)
    path = tmp_path / "d.db"
    open_db(path).close()
    calls: list[tuple[int, int]] = []
    async with ws_server(relay.handler) as port:
        sync = SyncThread(
            path,
            f"ws://127.0.0.1:{port}",
            store="s",
            on_progress=lambda d, t: calls.append((d, t)),
            **FAST,  # type: ignore[arg-type]
        )
        sync.start()
        try:
            await eventually(lambda: relay.received == [1], "the unit merged")
            assert sync.status.progress == (len(unit), len(unit))
            assert calls == [(len(unit), len(unit))]
        finally:
            await anyio.to_thread.run_sync(sync.stop)


class NewEpochRelay:
    """A relay store rebuilt under a new epoch: welcomes with epoch F and head 0 and acks
    every push, keeping what it received."""

    def __init__(self) -> None:
        self.pushes: list[p.Push] = []
        self.acked = 0

    async def handler(self, ws: Any) -> None:
        p.decode(await ws.recv())
        await ws.send(p.encode(p.Welcome(1, "F", 0, 0)))
        async for msg in peer_messages(ws):
            if isinstance(msg, p.Push):
                self.pushes.append(msg)
                if not msg.more:
                    self.acked = msg.upto
                    await ws.send(p.encode(p.Ack(msg.batch, msg.upto, 0)))
            elif isinstance(msg, p.Ping):
                await ws.send(p.encode(p.Pong(msg.id, 0)))


async def test_a_full_push_after_an_epoch_change_sends_compacted_deletes_as_collected(
    tmp_path: Path,
) -> None:
    db = open_db(tmp_path / "d.db")
    db.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [("a", "1"), ("b", "2"), ("c", "3")]
    )
    db.conn.execute("DELETE FROM todos WHERE id IN ('a', 'b')")
    # Synced with a store of epoch E whose horizon passed both deletes: compacted.
    positions.reset(db, "relay:s", "E")
    positions.record(db, "relay:s", "push", "E", db.db_version)
    positions.merge_and_record(db, [], "relay:s", "E", 1)
    positions.apply_horizon(db, "relay:s", 0)
    assert positions.apply_horizon(db, "relay:s", 1) == 2
    relay = NewEpochRelay()
    async with ws_server(relay.handler) as port:
        with anyio.fail_after(20):
            async with Peer(db, f"ws://127.0.0.1:{port}", store="s", **FAST) as peer:  # type: ignore[arg-type]
                await peer.wait_synced()
    sent = [c for push in relay.pushes for c in push.changes]
    collected = [c for c in sent if c.site_id == COLLECTED_SITE]
    assert sorted(crsync.unpack_pk(c.pk)[0] for c in collected) == ["a", "b"]
    assert {(c.cid, c.cl, c.db_version, c.seq) for c in collected} == {("-1", 2, 0, 0)}
    # They lead the first unit; the live row follows.
    assert relay.pushes[0].changes[: len(collected)] == collected
    assert {crsync.unpack_pk(c.pk)[0] for c in sent if c.site_id == db.site_id} == {"c"}


async def test_a_peer_that_stays_connected_learns_the_horizon_without_being_asked(
    tmp_path: Path,
) -> None:
    """No wait_synced, no reconnect: the Peer asks for the horizon every horizon_interval,
    so a device connected for weeks still compacts its tombstones."""
    relay = HorizonRelay(_unit(tmp_path))
    db = open_db(tmp_path / "d.db")
    async with ws_server(relay.handler) as port:
        with anyio.fail_after(20):
            async with Peer(
                db,
                f"ws://127.0.0.1:{port}",
                store="s",
                horizon_interval=0.05,
                **FAST,  # type: ignore[arg-type]
            ) as peer:
                await eventually(lambda: peer.stats.compacted_tombstones == 1, "compaction")
                assert peer.stats.connects == 1
    assert db.metadata_stats().collected == 1
