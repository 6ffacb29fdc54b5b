"""The relay is SIGKILLed again and again under load and loses nothing it acknowledged.

4 peers on 2 stores insert rows continuously (each INSERT's local version is recorded). At random
moments the relay process is killed with SIGKILL: while merging, between a merge and its ack,
while broadcasting. After each kill, before the relay restarts on the same port and data
directory, the store files are opened and must hold every row the peers had seen acknowledged
(``Peer.push_upto`` at or past the row's version). At the end every row written is on the relay and
on every device of its store exactly once, and every file passes ``PRAGMA integrity_check``.
"""

from __future__ import annotations

import contextlib
import random
import sqlite3
from pathlib import Path

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import TODOS, open_db

import crsync
from crsync.pack import unpack_pk
from crsync.peer import Peer

from .conftest import LONG, RelayFactory, integrity

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _files(relay: RelayProcess, tmp_path: Path) -> list[Path]:
    """The store files and the device files of a test."""
    return [relay.store_path(s) for s in STORES] + sorted(tmp_path.glob("*.db"))


LOG = "CREATE TABLE IF NOT EXISTS log (id TEXT PRIMARY KEY NOT NULL, dev TEXT, n INTEGER)"
KILLS = 100 if LONG else 20
STORES = {"k1": 3, "k2": 1}
PEER_OPTS: dict[str, float] = {"backoff_initial": 0.02, "backoff_max": 0.2, "open_timeout": 5.0}


def relay_ids(path: Path) -> list[str]:
    """Ids of the ``log`` rows a store file holds (one per row: its ``n`` cell)."""
    conn = sqlite3.connect(path)
    try:
        pks = conn.execute(
            "SELECT pk FROM relay_cells WHERE tbl = 'log' AND cid = 'n' AND cl % 2 = 1"
        ).fetchall()
    finally:
        conn.close()
    return [str(unpack_pk(pk)[0]) for (pk,) in pks]


async def _writer(
    db: crsync.Database, name: str, stop: anyio.Event, out: list[tuple[str, int]]
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        db.conn.execute("INSERT INTO log VALUES (?, ?, ?)", (f"{name}-{n}", name, n))
        out.append((f"{name}-{n}", db.db_version))  # the row's version is at most this
        await anyio.sleep(0.004)  # pacing of the simulated user, not a sync


@pytest.mark.slow
async def test_relay_sigkilled_repeatedly_loses_no_acknowledged_change(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay: RelayProcess = relay_factory()
    rnd = random.Random(5150)
    devices = {
        store: [
            (f"{store}d{i}", open_db(tmp_path / f"{store}d{i}.db", TODOS, LOG)) for i in range(n)
        ]
        for store, n in STORES.items()
    }
    written: dict[str, list[tuple[str, int]]] = {
        name: [] for devs in devices.values() for name, _db in devs
    }
    stop = anyio.Event()
    checked_acked = 0
    inflight_kills = 0
    with anyio.fail_after(KILLS * 3 + 60):
        async with contextlib.AsyncExitStack() as stack:
            peers: dict[str, Peer] = {}
            for store, devs in devices.items():
                for name, db in devs:
                    peers[name] = await stack.enter_async_context(
                        Peer(db, relay.url, store=store, token=relay.token(store), **PEER_OPTS)
                    )
            async with anyio.create_task_group() as nursery:
                for devs in devices.values():
                    for name, db in devs:
                        nursery.start_soon(_writer, db, name, stop, written[name])
                for _kill in range(KILLS):
                    await anyio.sleep(rnd.uniform(0.05, 0.6))  # a random moment under load
                    await anyio.to_thread.run_sync(relay.kill)
                    # Nothing can be acknowledged any more: what the peers saw acknowledged
                    # must be in the store files now.
                    inflight_kills += any(p.push_upto < p.local_sealed for p in peers.values())
                    for store, devs in devices.items():
                        on_relay = set(
                            await anyio.to_thread.run_sync(relay_ids, relay.store_path(store))
                        )
                        for name, _db in devs:
                            upto = peers[name].push_upto
                            acked = [i for i, v in written[name] if v <= upto]
                            lost = [i for i in acked if i not in on_relay]
                            assert not lost, f"kill {_kill}: acknowledged rows lost: {lost[:5]}"
                            checked_acked += len(acked)
                    await anyio.to_thread.run_sync(relay.start)
                stop.set()
            for _ in range(2):
                for peer in peers.values():
                    await peer.wait_synced()
    for store, devs in devices.items():
        expected = sorted(i for name, _db in devs for i, _v in written[name])
        on_relay = relay_ids(relay.store_path(store))
        assert sorted(on_relay) == expected  # all there, none twice
        for _name, db in devs:
            got = [r[0] for r in db.conn.execute("SELECT id FROM log ORDER BY id")]
            assert got == expected
    relay.stop()
    for path in _files(relay, tmp_path):
        assert integrity(path) == "ok", path
    print(  # figures for docs/reliability.md
        f"\nKILLS kills={KILLS} with_push_in_flight={inflight_kills} "
        f"rows={sum(len(w) for w in written.values())} acked_rows_checked={checked_acked} "
        f"restarts={relay.count('relay.listening')}"
    )
