"""Clock skew changes nothing: no wall clock takes part in capture or merge decisions.

The same scripted history (3 devices with fixed site ids, concurrent edits, pairwise syncs, and
a relay store receiving every device's changes) is replayed with the process clock set years
apart and with each device's writes made under a different clock (past, future, going
backwards). Every table, every CRDT clock and every relay cell must come out identical. An
SQLite authorizer also records every SQL function the capture triggers and the merges use: none
of them may read the time.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from crsync_relay.store import RelayStore

import crsync

TODOS = "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0)"
SITES = [bytes([i + 1] * 16) for i in range(3)]
TIME_FUNCTIONS = {
    "date",
    "time",
    "datetime",
    "julianday",
    "unixepoch",
    "strftime",
    "timediff",
    "current_date",
    "current_time",
    "current_timestamp",
}
YEAR = 365 * 86400.0


def _watch_functions(conn: sqlite3.Connection, used: set[str]) -> None:
    def authorizer(action: int, arg1: Any, arg2: Any, _db: Any, _src: Any) -> int:
        if action == sqlite3.SQLITE_FUNCTION:
            used.add(str(arg2).lower())
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)


def _history(
    tmp: Path, set_clock: Callable[[int], None], used: set[str]
) -> tuple[list[Any], list[Any], list[Any]]:
    """Replay the scripted history; ``set_clock(device)`` runs before each device's work."""
    rnd = random.Random(77)
    dbs = []
    for i, site in enumerate(SITES):
        db = crsync.connect(":memory:")
        db.conn.execute("UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (site,))
        db.conn.execute(TODOS)
        db.track("todos")
        _watch_functions(db.conn, used)
        dbs.append(db)
        assert db.site_id == SITES[i]

    def sync(a: int, b: int) -> None:
        set_clock(b)
        dbs[b].merge(dbs[a].changes(exclude_site=dbs[b].site_id))
        set_clock(a)
        dbs[a].merge(dbs[b].changes(exclude_site=dbs[a].site_id))

    for step in range(300):
        d = rnd.randrange(3)
        set_clock(d)
        k = str(rnd.randrange(6))
        r = rnd.random()
        conn = dbs[d].conn
        if r < 0.6:
            conn.execute(
                "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT (id) DO UPDATE "
                "SET title = excluded.title, done = done + 1",
                (k, f"d{d}s{step}"),
            )
        elif r < 0.8:
            conn.execute("DELETE FROM todos WHERE id = ?", (k,))
        else:
            sync(d, rnd.randrange(3))
    for _ in range(2):
        for a in range(3):
            for b in range(a + 1, 3):
                sync(a, b)
    store = RelayStore(tmp / f"relay-{time.time_ns()}.sqlite3")
    _watch_functions(store.conn, used)
    for d, db in enumerate(dbs):
        set_clock(d)
        changes = db.changes()
        store.merge_push(db.site_id, max(c.db_version for c in changes), changes)
    tables = [db.conn.execute("SELECT * FROM todos ORDER BY id").fetchall() for db in dbs]
    clocks = [
        sorted(
            (c.table, c.pk, c.cid, repr(c.val), c.col_version, c.db_version, c.site_id, c.cl, c.seq)
            for c in db.changes()
        )
        for db in dbs
    ]
    relay = store.conn.execute("SELECT * FROM relay_cells ORDER BY tbl, pk, cid").fetchall()
    store.close()
    return tables, clocks, relay


def test_merge_results_do_not_depend_on_wall_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    offset = [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + offset[0])
    monkeypatch.setattr(time, "time_ns", lambda: int((real() + offset[0]) * 1e9))

    def fixed(seconds: float) -> Callable[[int], None]:
        def set_clock(_device: int) -> None:
            offset[0] = seconds

        return set_clock

    def skewed(device: int) -> None:  # each device in another era, some going backwards
        offset[0] = [-20 * YEAR, 30 * YEAR, -random.random() * YEAR][device]

    used: set[str] = set()
    reference = _history(tmp_path, fixed(0.0), used)
    assert reference[0][0], "the history left no rows: it checks nothing"
    assert reference[0][0] == reference[0][1] == reference[0][2]
    for set_clock in (fixed(-40 * YEAR), fixed(40 * YEAR), skewed):
        assert _history(tmp_path, set_clock, used) == reference
    assert used, "the authorizer saw no function at all: it checks nothing"
    assert "total_changes" in used  # the triggers were compiled under the authorizer
    assert not used & TIME_FUNCTIONS, used
