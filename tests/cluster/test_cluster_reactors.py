"""Store reactors with stores in PostgreSQL: each store's reactor runs on exactly one node
(under an advisory lock) and moves to a surviving node when that node dies."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from sync.helpers import eventually

import crsync
from crsync.peer import Peer

from .conftest import NodeFactory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REACTOR = f"{Path(__file__).parents[1] / 'reactor' / 'relay_util.py'}:answer_questions"
REQUESTS = (
    "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY NOT NULL, question TEXT, answer TEXT)"
)
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


def device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(REQUESTS)
    db.track("requests")
    return db


def answer(db: crsync.Database, rid: str) -> object:
    row = db.conn.execute("SELECT answer FROM requests WHERE id = ?", (rid,)).fetchone()
    return None if row is None else row[0]


async def test_a_stores_reactor_runs_on_one_node_and_moves_when_it_dies(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    relays = [nodes("--reactor", REACTOR) for _ in range(2)]
    db = device(tmp_path / "d.db")
    with trio.fail_after(60):
        async with Peer(db, relays[0].url, store="q", **FAST) as p:  # type: ignore[arg-type]
            for i in range(3):
                db.conn.execute(
                    "INSERT INTO requests (id, question) VALUES (?, ?)", (f"r{i}", f"abc{i}")
                )
                await p.wait_synced()
                await eventually(lambda i=i: answer(db, f"r{i}") == f"{i}cba", f"answer {i}")
        owners = [r for r in relays if r.count(r"relay\.reactor\.lease store=q") > 0]
        assert len(owners) == 1, "exactly one node runs the store's reactor"
        owner = owners[0]
        survivor = relays[1 - relays.index(owner)]
        # every batch was handled once: the other node never ran the handler for it
        assert survivor.count(r"relay\.reactor\.batch store=q") == 0
        owner.kill()  # kill -9: PostgreSQL ends its session, its advisory locks go
        async with Peer(db, survivor.url, store="q", **FAST) as p:  # type: ignore[arg-type]
            db.conn.execute("INSERT INTO requests (id, question) VALUES ('after', 'xyz')")
            await p.wait_synced()
            await eventually(lambda: answer(db, "after") == "zyx", "the survivor's answer", 30)
    survivor.wait_for(r"relay\.reactor\.lease store=q")
