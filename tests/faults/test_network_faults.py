"""Peers behind a faulty network converge and lose nothing.

A :class:`FaultProxy` sits between every peer and a real relay process. A seeded random schedule
switches between faithful forwarding, delays, stalls, one-way cuts and connection drops (cut in
the middle of frames) while 5 peers on 2 stores write concurrently: contended upserts and deletes
on ``todos`` and an append-only ``log`` whose rows are all kept. Then the faults stop; every
peer of a store must end with identical tables, holding every ``log`` row whose INSERT returned on
any device of the store.
"""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import TODOS, open_db, snapshot

import crsync
from crsync.peer import Peer

from .conftest import LONG, integrity
from .proxy import FAULTS, FaultProxy

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _files(relay: RelayProcess, tmp_path: Path) -> list[Path]:
    """The store files and the device files of a test."""
    return [relay.store_path(s) for s in STORES] + sorted(tmp_path.glob("*.db"))


LOG = "CREATE TABLE IF NOT EXISTS log (id TEXT PRIMARY KEY NOT NULL, dev TEXT, n INTEGER)"
FAULT_SECONDS = 120.0 if LONG else 4.0
STORES = {"s1": 3, "s2": 2}
PEER_OPTS: dict[str, float] = {"backoff_initial": 0.02, "backoff_max": 0.3, "open_timeout": 3.0}


async def _editor(
    db: crsync.Database, name: str, rnd: random.Random, stop: anyio.Event, written: list[str]
) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        r = rnd.random()
        k = str(rnd.randrange(6))
        if r < 0.5:
            db.conn.execute("INSERT INTO log VALUES (?, ?, ?)", (f"{name}-{n}", name, n))
            written.append(f"{name}-{n}")  # the INSERT returned: it must survive everywhere
        elif r < 0.85:
            db.conn.execute(
                "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT (id) DO UPDATE "
                "SET title = excluded.title, done = done + 1",
                (k, f"{name}-{n}"),
            )
        else:
            db.conn.execute("DELETE FROM todos WHERE id = ?", (k,))
        await anyio.sleep(rnd.uniform(0, 0.01))  # pacing of the simulated user, not a sync


async def _schedule(proxy: FaultProxy, rnd: random.Random, seconds: float) -> None:
    end = anyio.current_time() + seconds
    while anyio.current_time() < end:
        proxy.set_fault(rnd.choice(FAULTS))
        await anyio.sleep(rnd.uniform(0.05, 0.4))  # how long this fault lasts
    proxy.set_fault("none")


@pytest.mark.parametrize("seed", [int(os.environ.get("CRSYNC_FAULT_SEED", "20261122"))])
async def test_peers_converge_and_keep_every_committed_write_under_network_faults(
    relay: RelayProcess, tmp_path: Path, seed: int
) -> None:
    rnd = random.Random(seed)
    proxy = FaultProxy(lambda: relay.port, random.Random(rnd.random()))
    devices: dict[str, list[tuple[str, crsync.Database]]] = {
        store: [
            (f"{store}d{i}", open_db(tmp_path / f"{store}d{i}.db", TODOS, LOG)) for i in range(n)
        ]
        for store, n in STORES.items()
    }
    written: dict[str, list[str]] = {store: [] for store in STORES}
    stop = anyio.Event()
    with anyio.fail_after(FAULT_SECONDS + 90):
        async with anyio.create_task_group() as nursery:
            await nursery.start(proxy.serve)
            async with contextlib.AsyncExitStack() as stack:
                peers: dict[str, list[Peer]] = {}
                for store, devs in devices.items():
                    token = relay.token(store)
                    peers[store] = [
                        await stack.enter_async_context(
                            Peer(db, proxy.url, store=store, token=token, **PEER_OPTS)
                        )
                        for _name, db in devs
                    ]
                async with anyio.create_task_group() as editors:
                    for store, devs in devices.items():
                        for name, db in devs:
                            editors.start_soon(
                                _editor, db, name, random.Random(rnd.random()), stop, written[store]
                            )
                    await _schedule(proxy, rnd, FAULT_SECONDS)
                    stop.set()
                # faults are off: everybody catches up
                for _ in range(2):
                    for ps in peers.values():
                        for peer in ps:
                            await peer.wait_synced()
                reconnects = sum(p.stats.connects for ps in peers.values() for p in ps)
            nursery.cancel_scope.cancel()
    for store, devs in devices.items():
        first = snapshot(devs[0][1])
        for _name, db in devs[1:]:
            assert snapshot(db) == first, f"store {store} diverged"
        ids = {r[0] for r in first["log"]}
        missing = set(written[store]) - ids
        assert not missing, f"store {store}: committed writes lost: {sorted(missing)[:10]}"
        assert len(first["log"]) == len(written[store])
    for path in _files(relay, tmp_path):
        assert integrity(path) == "ok", path
    s = proxy.stats
    assert s.resets > 0 and s.faults["drop"] > 0, "the schedule injected no faults"
    print(  # figures for docs/reliability.md
        f"\nFAULTS seed={seed} seconds={FAULT_SECONDS} faults={s.faults} resets={s.resets} "
        f"midchunk_cuts={s.midchunk_cuts} proxied_connections={s.connections} "
        f"peer_connects={reconnects} writes={sum(len(w) for w in written.values())}"
    )
