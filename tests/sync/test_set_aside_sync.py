"""Two app versions disagree on a constraint: the row one device writes cannot be applied on the
other. The other device sets it aside, keeps syncing everything else, and applies it once its
schema accepts it (security review H2: one row from one device never stops a store)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

import crsync
from crsync.peer import Peer, PeerState

from .conftest import RelayProcess

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

OPTS = {"backoff_initial": 0.05, "backoff_max": 0.3}
OLD = "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER)"
NEW = (
    "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, "
    "done INTEGER NOT NULL DEFAULT 0)"
)


def _device(path: Path, ddl: str) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(ddl)
    db.track("todos")
    return db


async def test_a_row_another_app_version_cannot_apply_is_set_aside_and_sync_goes_on(
    relay: RelayProcess, tmp_path: Path
) -> None:
    old, new = _device(tmp_path / "old.db", OLD), _device(tmp_path / "new.db", NEW)
    token = relay.token("s")
    old.conn.execute("INSERT INTO todos (id, title, done) VALUES ('a', 'fine', 1)")
    old.conn.execute("INSERT INTO todos (id, title, done) VALUES ('b', 'no done', NULL)")
    with anyio.fail_after(60):
        async with (
            Peer(old, relay.url, store="s", token=token, **OPTS) as po,
            Peer(new, relay.url, store="s", token=token, **OPTS) as pn,
        ):
            await po.wait_synced()
            await pn.wait_synced()
            assert pn.state is not PeerState.ERROR
            assert pn.stats.rejected_changes >= 1
            # later writes from both sides still flow
            old.conn.execute("INSERT INTO todos (id, title, done) VALUES ('c', 'later', 0)")
            new.conn.execute("INSERT INTO todos (id, title) VALUES ('d', 'from new')")
            await po.wait_synced()
            await pn.wait_synced()
            await po.wait_synced()
    ids = [r[0] for r in new.conn.execute("SELECT id FROM todos ORDER BY id")]
    assert ids == ["a", "c", "d"]
    assert sorted(r[0] for r in old.conn.execute("SELECT id FROM todos")) == ["a", "b", "c", "d"]
    rejected = new.rejected_changes()
    assert {r.change.table for r in rejected} == {"todos"}
    assert all("NOT NULL" in r.reason for r in rejected)
    # The old device fixes its row: the new device gets the fixed cell, and its set-aside
    # changes of that row now apply (the newer done = 0 wins over the NULL).
    old.conn.execute("UPDATE todos SET done = 0 WHERE id = 'b'")
    with anyio.fail_after(60):
        async with (
            Peer(old, relay.url, store="s", token=token, **OPTS) as po,
            Peer(new, relay.url, store="s", token=token, **OPTS) as pn,
        ):
            await po.wait_synced()
            await pn.wait_synced()
    assert [r[0] for r in new.conn.execute("SELECT id FROM todos ORDER BY id")] == [
        "a", "b", "c", "d"
    ]
    assert new.retry_rejected() == len(rejected)
    assert new.conn.execute("SELECT title, done FROM todos WHERE id = 'b'").fetchone() == (
        "no done",
        0,
    )
    assert new.rejected_count() == 0
