"""Store hygiene against token holders and the operator's repairs (security review L2, L3, H2),
with real relay processes and the real ``crsync-relay`` command."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import anyio
import attrs
import pytest
from sync.conftest import RelayProcess
from sync.conftest import relay_cli as _cli
from sync.helpers import open_db, ws_client

from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.peer import Peer, PeerState

from .conftest import RelayFactory

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

SCHEMA = {"todos": p.TableSchema(("id",), ("data", "done", "title"))}
OPTS = {"backoff_initial": 0.05, "backoff_max": 0.3}


def _wal_bytes(relay: RelayProcess, store: str) -> int:
    wal = Path(f"{relay.store_path(store)}-wal")
    return wal.stat().st_size if wal.exists() else 0


async def _session(relay: RelayProcess, store: str, frames: list[p.Message]) -> list[p.Message]:
    """Hello, then frames; return every answer until the relay has answered each frame."""
    token = relay.token(store)
    got: list[p.Message] = []
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, store, SITE, SCHEMA, 0, "", token, KEY)))
        got.append(p.decode(await ws.recv()))
        for f in frames:
            await ws.send(p.encode(f))
        await ws.send(p.encode(p.Ping(99)))
        with anyio.fail_after(20):
            while True:
                m = p.decode(await ws.recv())
                got.append(m)
                if isinstance(m, p.Pong | p.Error) and getattr(m, "id", 99) == 99:
                    return got


SITE, KEY = os.urandom(16), os.urandom(32)


async def test_empty_pushes_received_and_repeated_hellos_write_nothing(
    relay: RelayProcess,
) -> None:
    await _session(relay, "quiet", [])  # creates the store and records the schema
    before = _wal_bytes(relay, "quiet")
    frames: list[p.Message] = [p.Push(i, 0, 0, []) for i in range(1, 200)]
    frames += [p.Received(0) for _ in range(200)]
    got = await _session(relay, "quiet", frames)
    assert sum(isinstance(m, p.Ack) for m in got) == 199
    for _ in range(20):
        await _session(relay, "quiet", [])
    # 400 messages and 20 hellos that tell the relay nothing new: not one commit.
    assert _wal_bytes(relay, "quiet") == before


async def test_empty_pushes_are_charged_to_the_store_push_rate(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory("--max-push-cells-per-second", "20")
    await _session(relay, "slow", [])
    t0 = anyio.current_time()
    got = await _session(relay, "slow", [p.Push(i, 0, 0, []) for i in range(1, 61)])
    elapsed = anyio.current_time() - t0
    assert sum(isinstance(m, p.Ack) for m in got) == 60
    # 60 messages at 20 per second with one second of burst take at least about 2 s.
    assert elapsed >= 1.5, elapsed


async def test_announced_schemas_are_bounded(relay: RelayProcess) -> None:
    token = relay.token("big")
    wide = {"todos": p.TableSchema(("id",), tuple(f"c{i}" for i in range(2001)))}
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, "big", SITE, wide, 0, "", token, KEY)))
        msg = p.decode(await ws.recv())
    assert isinstance(msg, p.Error) and msg.code == "schema_mismatch"
    assert "more than 2000 columns" in msg.reason


async def test_forget_table_frees_a_table_squatted_with_a_wrong_key(
    relay: RelayProcess, tmp_path: Path
) -> None:
    token = relay.token("sq")
    squat = {"todos": p.TableSchema(("nope",), ())}
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, "sq", os.urandom(16), squat, 0, "", token, None)))
        assert isinstance(p.decode(await ws.recv()), p.Welcome)
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'mine')")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="sq", token=token, **OPTS) as pa:
            await pa.wait_state(PeerState.ERROR)
            assert "primary key is ['nope']" in str(pa.error)
    relay.stop()
    done = _cli(
        "forget-table", "--data-dir", str(relay.data_dir), "--store", "sq", "--table", "todos"
    )
    assert done.returncode == 0, done.stderr
    relay.start()
    b = open_db(tmp_path / "b.db")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="sq", token=token, **OPTS) as pa:
            await pa.wait_synced()
        async with Peer(b, relay.url, store="sq", token=token, **OPTS) as pb:
            await pb.wait_synced()
    assert b.conn.execute("SELECT id, title FROM todos").fetchall() == [("1", "mine")]


async def test_remove_takes_a_poisoned_cell_out_of_a_store(
    relay: RelayProcess, tmp_path: Path
) -> None:
    token = relay.token("pois")
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('ok', 'fine')")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="pois", token=token, **OPTS) as pa:
            await pa.wait_synced()
    relay.stop()
    # A cell an older relay accepted and no device can apply (a forged clock above the bound).
    conn = sqlite3.connect(relay.store_path("pois"))
    with conn:
        conn.execute(
            "INSERT INTO relay_cells (tbl, pk, cid, val, col_version, site_id, cl, seq, version)"
            " VALUES ('todos', ?, 'title', 'frozen', ?, ?, 1, 0, 1)",
            (pack_pk(["bad"]), 2**63 - 1, os.urandom(16)),
        )
    conn.close()
    refused = _cli(
        "remove",
        "--data-dir",
        str(relay.data_dir),
        "--store",
        "pois",
        "--table",
        "todos",
        "--key",
        '["nope"]',
    )
    assert refused.returncode != 0 and "has no row" in refused.stderr
    done = _cli(
        "remove",
        "--data-dir",
        str(relay.data_dir),
        "--store",
        "pois",
        "--table",
        "todos",
        "--pk-hex",
        pack_pk(["bad"]).hex(),
        "--column",
        "title",
    )
    assert done.returncode == 0, done.stderr
    assert "removed 1 cell" in done.stdout
    relay.start()
    b = open_db(tmp_path / "b.db")
    with anyio.fail_after(30):
        async with Peer(b, relay.url, store="pois", token=token, **OPTS) as pb:
            await pb.wait_synced()
    assert b.conn.execute("SELECT id, title FROM todos").fetchall() == [("ok", "fine")]


def test_repairs_refuse_while_the_relay_serves(relay: RelayProcess) -> None:
    done = _cli(
        "forget-table", "--data-dir", str(relay.data_dir), "--store", "x", "--table", "todos"
    )
    assert done.returncode != 0


NN = {"todos": p.TableSchema(("id",), ("data", "done", "title"), ("done",), False)}
NULLABLE = {"todos": p.TableSchema(("id",), ("data", "done", "title"), (), False)}
INTKEY = {"items": p.TableSchema(("id",), ("name",), (), True)}


async def _push(relay: RelayProcess, store: str, schema: Any, change: Change) -> p.Message:
    token = relay.token(store)
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, store, os.urandom(16), schema, 0, "", token, None)))
        assert isinstance(p.decode(await ws.recv()), p.Welcome)
        await ws.send(p.encode(p.Push(1, 0, 1, [change])))
        with anyio.fail_after(10):
            while True:
                m = p.decode(await ws.recv())
                if isinstance(m, p.Ack | p.Error):
                    return m


async def test_values_no_announcing_device_can_store_are_refused(relay: RelayProcess) -> None:
    """Review H2: NULL in a column every device declares NOT NULL, a text key in a table every
    device keys by its rowid. What one device can store is accepted (others set it aside)."""
    site = os.urandom(16)
    null_done = Change("todos", pack_pk(["k"]), "done", None, 1, 1, site, 1, 0)
    refused = await _push(relay, "nn", NN, null_done)
    assert isinstance(refused, p.Error) and refused.code == "invalid_changes"
    assert "NOT NULL" in refused.reason
    text_key = Change("items", pack_pk(["abc"]), "name", "x", 1, 1, site, 1, 0)
    refused = await _push(relay, "ik", INTKEY, text_key)
    assert isinstance(refused, p.Error) and "rowid" in refused.reason
    assert isinstance(
        await _push(relay, "ik", INTKEY, attrs.evolve(text_key, pk=pack_pk([7]))), p.Ack
    )
    # Once a device whose app version allows NULL announced the table, NULL is storable.
    assert isinstance(await _push(relay, "nn", NULLABLE, null_done), p.Ack)


async def test_poisoned_clocks_are_refused_and_a_device_at_the_bound_keeps_syncing(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Review H3: col_version 2^63-1 froze a cell for everyone, and the next device to edit it
    overflowed to a REAL clock and stopped syncing for good."""
    from crsync.change import MAX_CLOCK

    site = os.urandom(16)
    forged = Change("todos", pack_pk(["r1"]), "title", "frozen", 2**63 - 1, 1, site, 1, 0)
    refused = await _push(relay, "clk", NULLABLE, forged)
    assert isinstance(refused, p.Error) and refused.code == "invalid_changes"
    at_bound = attrs.evolve(forged, col_version=MAX_CLOCK)
    assert isinstance(await _push(relay, "clk", NULLABLE, at_bound), p.Ack)
    token = relay.token("clk")
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    with anyio.fail_after(30):
        async with (
            Peer(a, relay.url, store="clk", token=token, **OPTS) as pa,
            Peer(b, relay.url, store="clk", token=token, **OPTS) as pb,
        ):
            await pa.wait_synced()
            a.conn.execute("UPDATE todos SET title = 'zz edited' WHERE id = 'r1'")
            a.conn.execute("INSERT INTO todos (id, title) VALUES ('r2', 'later')")
            await pa.wait_synced()
            await pb.wait_synced()
            assert pa.state is not PeerState.ERROR and pb.state is not PeerState.ERROR
    assert b.conn.execute("SELECT id, title FROM todos ORDER BY id").fetchall() == [
        ("r1", "zz edited"),
        ("r2", "later"),
    ]
