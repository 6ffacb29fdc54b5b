"""Merge behaviour on the spec's vectors (TV-7 fix, TV-9..TV-27, TV-31), crsync to crsync."""

from __future__ import annotations

from typing import Any

import pytest
from core_helpers import SITE_A, SITE_B, SITE_C, canon, cells, open_db, rows

import crsync
from crsync import SENTINEL, Change, pack_pk

T = "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)"
FOO = "CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b)"


def node(site: bytes, ddl: str = T) -> crsync.Database:
    db = open_db(site=site)
    db.conn.execute(ddl)
    name = ddl.split("(")[0].split()[-1]
    db.track(name, integer_keys="app-assigned")
    return db


def sync(src: crsync.Database, dst: crsync.Database, since: int = 0) -> int:
    return dst.merge(src.changes(since=since))


def x(db: crsync.Database, *sql: str) -> None:
    """Run statements as one transaction, then seal it (so it gets its own db_version)."""
    db.conn.execute("BEGIN")
    for s in sql:
        db.conn.execute(s)
    db.conn.execute("COMMIT")
    _ = db.db_version


def meta(db: crsync.Database, table: str = "t") -> set[tuple[Any, ...]]:
    """(pk, cid, val, col_version, db_version, site, cl) of every change: full metadata."""
    return {
        (crsync.unpack_pk(c.pk), c.cid, canon(c.val), c.col_version, c.db_version, c.site_id, c.cl)
        for c in db.changes()
        if c.table == table
    }


def shared(
    ddl: str = T, insert: str = "INSERT INTO t VALUES('r1', 1, 'a')"
) -> tuple[crsync.Database, crsync.Database]:
    a, b = node(SITE_A, ddl), node(SITE_B, ddl)
    x(a, insert)
    sync(a, b)
    return a, b


def test_tv9_concurrent_different_columns_both_survive() -> None:
    a, b = shared()
    x(a, "UPDATE t SET a = 2")
    x(b, "UPDATE t SET b = 'z'")
    sync(a, b)
    sync(b, a)
    assert rows(a.conn, "t") == rows(b.conn, "t") == [(("str", "r1"), ("int", 2), ("str", "z"))]


@pytest.mark.parametrize("direction", ["a_to_b", "b_to_a"])
def test_tv10_higher_col_version_wins_regardless_of_value(direction: str) -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 2)")
    x(a, "UPDATE foo SET b = 0")
    x(b, "INSERT INTO foo VALUES(1, 2)")
    vb = b.db_version
    if direction == "a_to_b":
        sync(a, b)
        (c,) = b.changes()
        assert (c.val, c.col_version, c.site_id) == (0, 2, SITE_A)
        assert c.db_version > vb
    else:
        assert sync(b, a) == 0
    sync(a, b)
    sync(b, a)
    assert rows(a.conn, "foo") == rows(b.conn, "foo") == [(("int", 1), ("int", 0))]


def test_tv11_equal_col_version_larger_value_wins() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 1)")
    x(b, "INSERT INTO foo VALUES(1, 2)")
    before_b, va = meta(b, "foo"), a.db_version
    assert sync(a, b) == 0
    assert meta(b, "foo") == before_b
    assert sync(b, a) == 1
    (c,) = a.changes()
    assert (c.val, c.col_version, c.site_id) == (2, 1, SITE_B)
    assert c.db_version == va + 1


TV12 = [
    ("5", "'5'", 5),
    ("1", "1.5", 1),
    ("2.0", "2", 2),
    ("'a'", "x'61'", "a"),
    ("NULL", "0", 0),
    ("x'00'", "NULL", b"\x00"),
    ("-1", "0", 0),
    ("'B'", "'a'", "a"),
    ("'é'", "'z'", "é"),
    ("x'01'", "x'0100'", b"\x01\x00"),
    ("3.5", "-2.0", 3.5),
    ("10", "9", 10),
]


@pytest.mark.parametrize(("va", "vb", "winner"), TV12)
def test_tv12_value_order_decides_equal_versions(va: str, vb: str, winner: object) -> None:
    a, b = shared(insert="INSERT INTO t VALUES('r1', 'common', 0)")
    x(a, f"UPDATE t SET a = {va}")
    x(b, f"UPDATE t SET a = {vb}")
    sync(a, b)
    sync(b, a)
    for db in (a, b):
        got = db.conn.execute("SELECT a FROM t").fetchone()[0]
        assert canon(got) == canon(winner)
    assert cells(a) == cells(b)


def test_tv13_equal_value_equal_version_changes_nothing() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 2)")
    x(b, "INSERT INTO foo VALUES(1, 2)")
    ma, mb, va, vb = meta(a, "foo"), meta(b, "foo"), a.db_version, b.db_version
    assert sync(a, b) == 0
    assert sync(b, a) == 0
    assert (meta(a, "foo"), meta(b, "foo")) == (ma, mb)
    assert (a.db_version, b.db_version) == (va, vb)


def test_tv14_stale_change_is_ignored_and_consumes_no_version() -> None:
    a, b = shared()
    old = a.changes()
    x(b, "UPDATE t SET a = 5")
    x(b, "UPDATE t SET a = 6")
    before, vb = meta(b), b.db_version
    assert b.merge(old) == 0
    assert meta(b) == before
    assert b.db_version == vb


def test_tv15_delete_beats_concurrent_updates() -> None:
    a, b = shared()
    x(a, "DELETE FROM t")
    x(b, "UPDATE t SET a = 5")
    x(b, "UPDATE t SET a = 6")
    sync(a, b)
    sync(b, a)
    for db in (a, b):
        assert rows(db.conn, "t") == []
        assert {(c.cid, c.col_version, c.site_id, c.cl) for c in db.changes()} == {
            (SENTINEL, 2, SITE_A, 2)
        }


def test_tv16_concurrent_reinserts_mix_columns() -> None:
    a, b = shared()
    x(a, "DELETE FROM t")
    x(b, "DELETE FROM t")
    sync(a, b)
    sync(b, a)
    x(a, "INSERT INTO t VALUES('r1', 2, 'p')")
    x(b, "INSERT INTO t VALUES('r1', 3, 'o')")
    sync(a, b)
    sync(b, a)
    expected = [(("str", "r1"), ("int", 3), ("str", "p"))]
    assert rows(a.conn, "t") == rows(b.conn, "t") == expected
    sa = {c.site_id for c in a.changes() if c.cid == SENTINEL}
    sb = {c.site_id for c in b.changes() if c.cid == SENTINEL}
    assert (sa, sb) == ({SITE_A}, {SITE_B})  # equal-cl sentinels are not merged


def test_tv17_delete_and_resurrect_beats_higher_column_versions() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 1)", "DELETE FROM foo", "INSERT INTO foo VALUES(1, 1)")
    x(b, "INSERT INTO foo VALUES(1, 1)")
    x(b, "UPDATE foo SET b = 3")
    x(b, "UPDATE foo SET b = 4")
    sync(a, b)
    assert rows(b.conn, "foo") == [(("int", 1), ("int", 1))]
    got = {(c.cid, c.val, c.col_version, c.cl) for c in b.changes()}
    assert got == {(SENTINEL, None, 3, 3), ("b", 1, 1, 3)}


def test_tv18_smaller_cl_loses_entirely() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 1)", "DELETE FROM foo")
    x(b, "INSERT INTO foo VALUES(1, 7)", "DELETE FROM foo", "INSERT INTO foo VALUES(1, 7)")
    before, vb = meta(b, "foo"), b.db_version
    assert sync(a, b) == 0
    a2 = node(SITE_C, FOO)
    x(a2, "INSERT INTO foo VALUES(1, 9)")
    x(a2, "UPDATE foo SET b = 10")
    assert sync(a2, b) == 0
    assert meta(b, "foo") == before and b.db_version == vb
    assert rows(b.conn, "foo") == [(("int", 1), ("int", 7))]


def test_tv19_equal_delete_is_a_noop() -> None:
    a, b = shared()
    x(a, "DELETE FROM t")
    x(b, "DELETE FROM t")
    ma, mb = meta(a), meta(b)
    assert sync(a, b) == 0 and sync(b, a) == 0
    assert (meta(a), meta(b)) == (ma, mb)


def test_tv20_missed_delete_resurrect_arrives_alone() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 0)")
    x(b, "INSERT INTO foo VALUES(1, 0)")
    for v in (1, 2, 3):
        x(b, f"UPDATE foo SET b = {v}")
    x(a, "DELETE FROM foo")
    v2 = a.db_version
    x(a, "INSERT INTO foo VALUES(1, 1)")
    sync(a, b, since=v2)
    got = {(c.cid, c.val, c.col_version, c.site_id, c.cl) for c in b.changes()}
    assert got == {(SENTINEL, None, 3, SITE_A, 3), ("b", 1, 1, SITE_A, 3)}
    assert rows(a.conn, "foo") == rows(b.conn, "foo")
    before, vb = meta(b, "foo"), b.db_version
    assert sync(a, b) == 0
    assert meta(b, "foo") == before and b.db_version == vb


def _tv21_start() -> tuple[crsync.Database, crsync.Database]:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(a, "INSERT INTO foo VALUES(1, 1)", "DELETE FROM foo", "INSERT INTO foo VALUES(1, 1)")
    x(b, "INSERT INTO foo VALUES(1, 1)")
    return a, b


def test_tv21_resurrect_sentinel_reaching_a_live_row_zeroes_its_cells() -> None:
    a, b = _tv21_start()
    vb = b.db_version
    sentinel = [c for c in a.changes() if c.cid == SENTINEL]
    cell = [c for c in a.changes() if c.cid == "b"]
    assert b.merge(sentinel) == 1
    got = {(c.cid, c.val, c.col_version, c.site_id, c.cl) for c in b.changes()}
    assert got == {(SENTINEL, None, 3, SITE_A, 3), ("b", 1, 0, SITE_B, 3)}
    assert all(c.db_version > vb for c in b.changes())  # zeroed clocks are re-stamped
    assert b.merge(cell) == 1
    got = {(c.cid, c.val, c.col_version, c.site_id, c.cl) for c in b.changes()}
    assert got == {(SENTINEL, None, 3, SITE_A, 3), ("b", 1, 1, SITE_A, 3)}


def test_tv22_resurrect_cell_reaching_a_live_row_first() -> None:
    a, b = _tv21_start()
    cell = [c for c in a.changes() if c.cid == "b"]
    assert b.merge(cell) == 1
    got = {(c.cid, c.val, c.col_version, c.site_id, c.cl, c.seq) for c in b.changes()}
    assert got == {
        (SENTINEL, None, 3, SITE_A, 3, cell[0].seq),  # sentinel takes the cell's seq
        ("b", 1, 1, SITE_A, 3, cell[0].seq),
    }
    before, vb = meta(b, "foo"), b.db_version
    assert sync(a, b) == 0
    assert meta(b, "foo") == before and b.db_version == vb


def test_tv23_resurrect_a_dead_row_via_sentinel_or_cell() -> None:
    a, _ = _tv21_start()
    for which in (SENTINEL, "b"):
        b = node(SITE_B, FOO)
        x(b, "INSERT INTO foo VALUES(1, 1)")
        x(b, "DELETE FROM foo")
        assert b.merge([c for c in a.changes() if c.cid == which]) == 1
        if which == SENTINEL:
            assert rows(b.conn, "foo") == [(("int", 1), ("NoneType", None))]
            assert {(c.cid, c.col_version, c.site_id, c.cl) for c in b.changes()} == {
                (SENTINEL, 3, SITE_A, 3)
            }
        else:
            assert rows(b.conn, "foo") == [(("int", 1), ("int", 1))]
            ch = b.changes()
            assert {(c.cid, c.col_version, c.cl) for c in ch} == {(SENTINEL, 3, 3), ("b", 1, 3)}
            assert len({c.db_version for c in ch}) == 1


def test_tv24_third_node_after_partial_delivery() -> None:
    ddl = "CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b, c, d, e)"
    a, b, c = node(SITE_A, ddl), node(SITE_B, ddl), node(SITE_C, ddl)
    x(c, "INSERT INTO foo VALUES(1, 'b', 'c', 'd', 'e')")
    v1 = c.db_version
    sync(c, a)
    sync(c, b)
    x(c, "DELETE FROM foo")
    v2 = c.db_version
    a.merge(c.changes(since=v1))
    b.merge(c.changes(since=v1))
    x(c, "INSERT INTO foo VALUES(1, 'b1', 'c1', 'd1', 'e1')")
    v3 = c.db_version
    v3_changes = [ch for ch in c.changes(since=v2) if ch.db_version == v3]
    b.merge(v3_changes)
    x(c, "UPDATE foo SET b = 'b2', c = 'c2'")
    v4_changes = c.changes(since=v3)
    a.merge(v4_changes)
    b.merge(v4_changes)
    got = {(ch.cid, ch.col_version, ch.cl) for ch in a.changes()}
    assert got == {(SENTINEL, 3, 3), ("b", 2, 3), ("c", 2, 3)}
    a.merge(v3_changes)
    expected = rows(c.conn, "foo")
    assert expected == [(("int", 1), ("str", "b2"), ("str", "c2"), ("str", "d1"), ("str", "e1"))]
    assert rows(a.conn, "foo") == rows(b.conn, "foo") == expected
    assert cells(a) == cells(b) == cells(c)


def test_tv25_pk_only_delete_and_resurrect() -> None:
    ddl = "CREATE TABLE u(a INTEGER PRIMARY KEY NOT NULL)"
    a, b = node(SITE_A, ddl), node(SITE_B, ddl)
    x(a, "INSERT INTO u VALUES(1)")
    x(b, "INSERT INTO u VALUES(1)")
    x(a, "DELETE FROM u")
    x(a, "INSERT INTO u VALUES(1)")
    x(b, "DELETE FROM u")
    sync(a, b)
    assert rows(b.conn, "u") == [(("int", 1),)]
    assert [(c.pk, c.cid, c.val, c.col_version, c.site_id, c.cl) for c in b.changes()] == [
        (bytes.fromhex("010901"), SENTINEL, None, 3, SITE_A, 3)
    ]


def test_tv26_one_merge_gets_one_version_at_least_the_incoming_maximum() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    x(b, "INSERT INTO foo VALUES(100, 0)")
    assert b.db_version == 1
    for i in range(1, 6):
        x(a, f"INSERT INTO foo VALUES({i}, {i})")
    assert a.db_version == 5
    assert sync(a, b) == 5
    merged = [c for c in b.changes() if c.site_id == SITE_A]
    # crsync stamps every winner of one merge call with one version (cr-sqlite: 2,2,3,4,5)
    assert {c.db_version for c in merged} == {5}
    assert b.db_version == 5
    assert sync(a, b) == 0
    assert b.db_version == 5


def test_tv27_empty_receiver_mirrors_versions() -> None:
    a, b = node(SITE_A, FOO), node(SITE_B, FOO)
    cursor = 0
    for sql in (
        "INSERT INTO foo VALUES(1, 1)",
        "UPDATE foo SET b = 2",
        "DELETE FROM foo",
        "INSERT INTO foo VALUES(1, 3)",
    ):
        x(a, sql)
        cursor, got = a.changes_since(cursor)
        b.merge(got)
    versions = sorted(c.db_version for c in b.changes())
    assert {c.site_id for c in b.changes()} == {SITE_A}
    assert versions == [4, 4]  # the re-insert's sentinel and cell
    assert b.db_version == 4


def test_tv7_pk_change_synced_incrementally_converges() -> None:
    ddl = "CREATE TABLE t2(a INTEGER PRIMARY KEY NOT NULL, b)"
    a, b = node(SITE_A, ddl), node(SITE_B, ddl)
    x(a, "INSERT INTO t2 VALUES(1, 'v')")
    cursor, got = a.changes_since(0)
    b.merge(got)
    x(a, "UPDATE t2 SET a = 2 WHERE a = 1")
    cursor, got = a.changes_since(cursor)
    b.merge(got)
    assert rows(b.conn, "t2") == rows(a.conn, "t2") == [(("int", 2), ("str", "v"))]
    assert cells(a) == cells(b)


def test_tv7_pk_change_onto_a_row_that_exists_on_the_peer() -> None:
    ddl = "CREATE TABLE t2(a INTEGER PRIMARY KEY NOT NULL, b)"
    a, b = node(SITE_A, ddl), node(SITE_B, ddl)
    x(a, "INSERT INTO t2 VALUES(1, 'v')")
    x(b, "INSERT INTO t2 VALUES(2, 'w')")
    sync(a, b)
    sync(b, a)
    x(a, "DELETE FROM t2 WHERE a = 2", "UPDATE t2 SET a = 2 WHERE a = 1")
    sync(a, b)
    sync(b, a)
    assert rows(b.conn, "t2") == rows(a.conn, "t2") == [(("int", 2), ("str", "v"))]


def test_tv31_default_valued_cells_after_migration() -> None:
    ddl = "CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b DEFAULT 4)"
    a, b = node(SITE_A, ddl), node(SITE_B, ddl)
    x(b, "INSERT INTO foo (a) VALUES (1)")
    with b.migrate("foo") as conn:
        conn.execute("ALTER TABLE foo ADD COLUMN c DEFAULT 0")
    with a.migrate("foo") as conn:
        conn.execute("ALTER TABLE foo ADD COLUMN c DEFAULT 0")
    x(a, "INSERT INTO foo VALUES (1, 2, 3)")
    assert {c.cid for c in b.changes()} == {"b"}  # the default-valued c has no clock
    sync(a, b)
    sync(b, a)
    assert rows(a.conn, "foo") == rows(b.conn, "foo") == [(("int", 1), ("int", 4), ("int", 3))]


# ---------------------------------------------------------------- merge properties


def test_merge_is_idempotent() -> None:
    a, b = shared()
    x(a, "UPDATE t SET a = 9", "INSERT INTO t VALUES('r2', 1, 2)")
    x(a, "DELETE FROM t WHERE id = 'r1'")
    ch = a.changes()
    assert b.merge(ch) > 0
    before, vb, data = meta(b), b.db_version, rows(b.conn, "t")
    for _ in range(2):
        assert b.merge(ch) == 0
        assert b.merge(list(reversed(ch)) + ch) == 0
    assert (meta(b), b.db_version, rows(b.conn, "t")) == (before, vb, data)


def test_merged_changes_are_not_recorded_as_local_writes() -> None:
    a, b = node(SITE_A), node(SITE_B)
    x(a, "INSERT INTO t VALUES('r1', 1, 'x')", "INSERT INTO t VALUES('r2', 2, 'y')")
    x(a, "DELETE FROM t WHERE id = 'r2'")
    x(a, "UPDATE t SET id = 'r3' WHERE id = 'r1'")
    sync(a, b)
    assert b.changes(exclude_site=SITE_A) == []
    assert {c.site_id for c in b.changes()} == {SITE_A}
    # and a local write afterwards is attributed to B
    x(b, "UPDATE t SET a = 5")
    assert [(c.cid, c.site_id) for c in b.changes(exclude_site=SITE_A)] == [("a", SITE_B)]


def test_merged_changes_keep_clock_site_and_seq_and_get_a_local_version() -> None:
    a, b = node(SITE_A), node(SITE_B)
    for i in range(3):
        x(b, f"INSERT INTO t VALUES('b{i}', {i}, {i})")
    x(a, "INSERT INTO t VALUES('r1', 1, 'x')")
    x(a, "UPDATE t SET a = 2")
    x(a, "INSERT INTO t VALUES('r2', 1, 'x')", "DELETE FROM t WHERE id = 'r2'")
    vb = b.db_version
    incoming = a.changes()
    b.merge(incoming)
    by_key = {(c.pk, c.cid): c for c in b.changes()}
    for c in incoming:
        got = by_key[(c.pk, c.cid)]
        assert (got.col_version, got.site_id, got.seq, got.cl, got.val) == (
            c.col_version,
            c.site_id,
            c.seq,
            c.cl,
            c.val,
        )
        assert got.db_version >= c.db_version
        assert got.db_version > vb


def test_merge_accepts_tuples_and_lists() -> None:
    a, b = node(SITE_A), node(SITE_B)
    x(a, "INSERT INTO t VALUES('r1', 1, 'x')")
    ch = a.changes()
    assert b.merge([c.as_tuple() for c in ch[:1]] + [list(c.as_tuple()) for c in ch[1:]]) == 2
    assert rows(a.conn, "t") == rows(b.conn, "t")


def test_merge_of_cell_for_unseen_row_with_cl_1_creates_it_with_defaults() -> None:
    ddl = "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a DEFAULT 'dflt', b NOT NULL DEFAULT 7)"
    b = node(SITE_B, ddl)
    c = Change("t", pack_pk(["r"]), "a", "v", 1, 1, SITE_A, 1, 0)
    assert b.merge([c]) == 1
    assert rows(b.conn, "t") == [(("str", "r"), ("str", "v"), ("int", 7))]
    assert {(ch.cid, ch.cl) for ch in b.changes()} == {("a", 1)}


def test_relay_chain_forwards_merged_changes() -> None:
    a, r, c = node(SITE_A), node(SITE_B), node(SITE_C)
    cur_r, cur_c = 0, 0
    for i in range(4):
        x(a, f"INSERT INTO t VALUES('r{i}', {i}, 'x')")
        x(c, f"INSERT INTO t VALUES('c{i}', {i}, 'y')")
        if i:
            x(a, f"UPDATE t SET b = 'a{i}' WHERE id = 'c{i - 1}'")
        r.merge(a.changes())
        cur_r, got = r.changes_since(cur_r, exclude_site=SITE_C)
        c.merge(got)
        x(c, "UPDATE t SET a = a + 100 WHERE id = 'r0'")
        r.merge(c.changes())
        cur_c, got = r.changes_since(cur_c, exclude_site=SITE_A)
        a.merge(got)
    r.merge(a.changes())
    r.merge(c.changes())
    cur_r, got = r.changes_since(cur_r, exclude_site=SITE_C)
    c.merge(got)
    cur_c, got = r.changes_since(cur_c, exclude_site=SITE_A)
    a.merge(got)
    assert rows(a.conn, "t") == rows(r.conn, "t") == rows(c.conn, "t")
