"""Clocks cannot be poisoned into a crash (security review H3): clocks above the bound are
refused, and a device holding a clock at the bound keeps syncing whatever it edits."""

from __future__ import annotations

import sqlite3

import pytest

import crsync
from crsync import Change, InvalidChangeError, pack_pk
from crsync.change import MAX_CLOCK

PEER = bytes(range(16))


def _db() -> crsync.Database:
    db = crsync.connect(":memory:")
    db.conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT, w TEXT)")
    db.track("t")
    return db


@pytest.mark.parametrize("field", [4, 5, 7])  # col_version, db_version, cl
def test_clocks_above_the_bound_are_refused(field: int) -> None:
    row = ["t", pack_pk(["k"]), "v", "x", 1, 1, PEER, 1, 0]
    row[field] = MAX_CLOCK + 1
    with pytest.raises(InvalidChangeError, match="out of range"):
        _db().merge([row])


def test_editing_a_cell_at_the_bound_saturates_and_still_syncs() -> None:
    a, b = _db(), _db()
    frozen = Change("t", pack_pk(["k"]), "v", "frozen", MAX_CLOCK, 1, PEER, 1, 0)
    for db in (a, b):
        db.merge([frozen])
    a.conn.execute("UPDATE t SET v = 'zzz edited', w = 'other' WHERE id = 'k'")
    mine = [c for c in a.changes() if c.site_id == a.site_id]
    v = next(c for c in mine if c.cid == "v")
    assert v.col_version == MAX_CLOCK and type(v.col_version) is int
    assert b.merge(mine) >= 1  # valid everywhere: no REAL clock, nothing refused
    # equal clocks: the larger value wins on both devices
    assert a.conn.execute("SELECT v, w FROM t").fetchall() == b.conn.execute(
        "SELECT v, w FROM t"
    ).fetchall() == [("zzz edited", "other")]


def test_deleting_a_row_at_the_causal_length_bound_is_refused_clearly() -> None:
    db = _db()
    db.merge([Change("t", pack_pk(["k"]), "-1", None, MAX_CLOCK, 1, PEER, MAX_CLOCK, 0)])
    with pytest.raises(sqlite3.IntegrityError, match="clock bound"):
        db.conn.execute("DELETE FROM t WHERE id = 'k'")
    # nothing half-done: the row is there, other writes and the feed work
    db.conn.execute("INSERT INTO t (id, v) VALUES ('other', 'x')")
    assert {c.table for c in db.changes()} == {"t"}
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2
