"""A table rebuilt by another program while Peers run keeps syncing, writes of the window
included (real relay process, loopback sockets)."""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import pytest

from .conftest import RelayProcess
from .helpers import eventually, open_db, rows, snapshot
from .test_sync_e2e import converge, peers

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

REBUILD = """
import sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("PRAGMA legacy_alter_table = OFF")
c.execute("BEGIN")
c.execute("CREATE TABLE new_todos (id TEXT PRIMARY KEY NOT NULL, title TEXT DEFAULT '', "
          "done INTEGER DEFAULT 0, data BLOB)")
c.execute("INSERT INTO new_todos SELECT * FROM todos")
c.execute("DROP TABLE todos")
c.execute("ALTER TABLE new_todos RENAME TO todos")
c.execute("COMMIT")
c.execute("UPDATE todos SET title = 'edited after the rebuild' WHERE id = 'r1'")
c.execute("DELETE FROM todos WHERE id = 'r2'")
c.execute("INSERT INTO todos (id, title) VALUES ('r3', 'new after the rebuild')")
"""


async def test_rebuild_by_another_process_while_peers_run(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one'), ('r2', 'two')")
    with anyio.fail_after(30):
        async with peers(relay, "rebuild", a, b) as (pa, pb):
            await converge([pa, pb])
            assert len(rows(b)) == 2
            await anyio.run_process([sys.executable, "-c", REBUILD, str(tmp_path / "a.db")])
            await eventually(
                lambda: (
                    rows(b)
                    == [
                        ("r1", "edited after the rebuild", 0, None),
                        ("r3", "new after the rebuild", 0, None),
                    ]
                ),
                "the writes made after the rebuild to reach B",
            )
            a.conn.execute("UPDATE todos SET done = 1 WHERE id = 'r3'")  # captured again
            await eventually(lambda: rows(b)[-1][2] == 1, "the next write to reach B")
            await converge([pa, pb])
    assert snapshot(a) == snapshot(b)


async def test_dropping_a_tracked_table_stops_the_peer_with_a_clear_error(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """A tracked table dropped behind crsync's back: the Peer stops in ERROR naming the table
    and the fix, and the app's block sees a CrsyncError (never an exception group)."""
    import crsync
    from crsync.peer import Peer, PeerState

    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    token = relay.token("drop")
    with anyio.fail_after(30):
        with pytest.raises(crsync.CrsyncError) as info:
            async with Peer(a, relay.url, store="drop", token=token) as pa:
                await pa.wait_synced()
                a.conn.execute("DROP TABLE todos")
                pa.notify()
                await pa.wait_state(PeerState.ERROR)
                await pa.wait_synced()
    assert not isinstance(info.value, BaseExceptionGroup)
    assert "todos" in str(info.value)
