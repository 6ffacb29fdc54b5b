"""Agreement with cr-sqlite 0.16 on UPDATE OR REPLACE and on local ``seq`` numbering.

The cr-sqlite side of each behaviour is pinned against the real cr-sqlite in tests/interop
(test_exact_agreement_interop.py); these tests pin crsync's own outcome and the mechanism.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path

from core_helpers import SITE_A, SITE_B, open_db

import crsync
from crsync import SENTINEL, Change, pack_pk
from crsync.triggers import SEQ_STEP


def by_key(db: crsync.Database, table: str = "foo") -> dict[tuple[object, str], Change]:
    return {(crsync.unpack_pk(c.pk), c.cid): c for c in db.changes() if c.table == table}


def foo_db(site: bytes, path: str | Path = ":memory:") -> crsync.Database:
    db = open_db(path, site=site)
    db.conn.execute("CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b, c)")
    db.track("foo", integer_keys="app-assigned")
    return db


def clocks(db: crsync.Database) -> set[tuple[object, ...]]:
    return {
        (c.pk, c.cid, c.val, c.col_version, c.cl)
        for c in db.changes()
        if not (c.cid == SENTINEL and c.cl == 1)
    }


def sync(src: crsync.Database, dst: crsync.Database) -> None:
    dst.merge(src.changes())


# ------------------------------------------------------------------ UPDATE OR REPLACE


def test_update_or_replace_onto_a_live_key_keeps_its_causal_length() -> None:
    db = foo_db(SITE_A)
    db.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    v = db.db_version
    db.conn.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
    assert db.conn.execute("SELECT * FROM foo").fetchall() == [(2, "one", "x")]
    ch = by_key(db)
    # cr-sqlite 0.16 records exactly this for the keys: the old key deleted (cl 2), the target
    # keeps cl 1 with a "-1" record at the new version (a no-op on every receiver).
    assert (ch[((1,), SENTINEL)].cl, ch[((1,), SENTINEL)].db_version) == (2, v + 1)
    target = ch[((2,), SENTINEL)]
    assert (target.col_version, target.cl, target.db_version) == (1, 1, v + 1)
    for col, val in (("b", "one"), ("c", "x")):
        cell = ch[((2,), col)]
        # moved cells: above both rows' clocks (1), at the new version (incremental peers get them)
        assert (cell.val, cell.col_version, cell.cl, cell.db_version) == (val, 2, 1, v + 1)


def test_update_or_replace_moved_cells_beat_the_targets_own_clock() -> None:
    db = foo_db(SITE_A)
    db.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    for n in range(3):  # target cells at col_version 4
        db.conn.execute("UPDATE foo SET b = ?, c = ? WHERE a = 2", (f"t{n}", f"u{n}"))
    db.conn.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
    ch = by_key(db)
    assert ch[((2,), "b")].col_version == 5
    assert ch[((2,), SENTINEL)].cl == 1
    peer = foo_db(SITE_B)
    sync(db, peer)
    assert peer.conn.execute("SELECT * FROM foo").fetchall() == [(2, "one", "x")]


def test_concurrent_edit_of_the_target_survives_update_or_replace() -> None:
    """The edit is lost when the replace raises the target's cl (a resurrection wipes it)."""
    a, b = foo_db(SITE_A), foo_db(SITE_B)
    a.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    sync(a, b)
    a.conn.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
    # concurrently on b: row 2 edited twice (col_version 3 beats the moved cells' 2)
    b.conn.execute("UPDATE foo SET b = 'bee' WHERE a = 2")
    b.conn.execute("UPDATE foo SET b = 'bee!' WHERE a = 2")
    sync(a, b)
    sync(b, a)
    want = [(2, "bee!", "x")]
    assert a.conn.execute("SELECT * FROM foo").fetchall() == want
    assert b.conn.execute("SELECT * FROM foo").fetchall() == want
    # same clocks (a redundant cl-1 "-1" record is attribution, as in cr-sqlite)
    assert clocks(a) == clocks(b)


def test_concurrent_equal_clock_edit_converges_by_value() -> None:
    a, b = foo_db(SITE_A), foo_db(SITE_B)
    a.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    sync(a, b)
    a.conn.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
    b.conn.execute("UPDATE foo SET b = 'bee', c = 'zz' WHERE a = 2")  # col_version 2 each
    sync(b, a)
    sync(a, b)
    # equal col_versions: the larger value wins each cell ('one' > 'bee', 'zz' > 'x')
    want = [(2, "one", "zz")]
    assert a.conn.execute("SELECT * FROM foo").fetchall() == want
    assert b.conn.execute("SELECT * FROM foo").fetchall() == want


def test_update_or_replace_onto_a_dead_key_resurrects_it() -> None:
    db = foo_db(SITE_A)
    db.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
    db.conn.execute("DELETE FROM foo WHERE a = 2")
    db.conn.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
    assert by_key(db)[((2,), SENTINEL)].cl == 3


def test_update_or_replace_in_a_pk_only_table_keeps_a_live_targets_cl() -> None:
    db = open_db(site=SITE_A)
    db.conn.execute("CREATE TABLE p(k INTEGER PRIMARY KEY NOT NULL)")
    db.track("p", integer_keys="app-assigned")
    db.conn.execute("INSERT INTO p VALUES (1), (2)")
    db.conn.execute("UPDATE OR REPLACE p SET k = 2 WHERE k = 1")
    ch = by_key(db, "p")
    assert (ch[((1,), SENTINEL)].cl, ch[((2,), SENTINEL)].cl) == (2, 1)


# ------------------------------------------------------------------ seq


def feed_order(db: crsync.Database) -> list[tuple[str, object, str]]:
    return [(c.table, crsync.unpack_pk(c.pk), c.cid) for c in db.changes()]


def test_seq_follows_write_order_across_tables_in_a_transaction() -> None:
    db = open_db(site=SITE_A)
    db.conn.execute("CREATE TABLE wide(id INTEGER PRIMARY KEY NOT NULL, a, b, c, d, e, f)")
    db.conn.execute("CREATE TABLE narrow(id INTEGER PRIMARY KEY NOT NULL, x)")
    db.track("wide", integer_keys="app-assigned")
    db.track("narrow", integer_keys="app-assigned")
    db.conn.execute("BEGIN")
    db.conn.execute("INSERT INTO narrow VALUES (1, 'first')")
    db.conn.execute("INSERT INTO wide VALUES (1, 1, 2, 3, 4, 5, 6)")
    db.conn.execute("INSERT INTO narrow VALUES (2, 'third')")
    db.conn.execute("UPDATE wide SET c = 'fourth' WHERE id = 1")
    db.conn.execute("COMMIT")
    assert feed_order(db) == [
        ("narrow", (1,), "x"),
        ("wide", (1,), "a"),
        ("wide", (1,), "b"),
        ("wide", (1,), "d"),
        ("wide", (1,), "e"),
        ("wide", (1,), "f"),
        ("narrow", (2,), "x"),
        ("wide", (1,), "c"),
    ]
    assert len({c.seq for c in db.changes()}) == 8


def test_pk_change_orders_the_old_keys_delete_first() -> None:
    db = foo_db(SITE_A)
    db.conn.execute("INSERT INTO foo VALUES (1, 'one', 'x')")
    v = db.db_version
    db.conn.execute("UPDATE foo SET a = 5, c = 'y' WHERE a = 1")
    assert feed_order(db)[-4:] == [
        ("foo", (1,), SENTINEL),
        ("foo", (5,), SENTINEL),
        ("foo", (5,), "b"),
        ("foo", (5,), "c"),
    ]
    assert all(c.db_version == v + 1 for c in db.changes()[-4:])


def test_two_connections_in_one_open_version_never_repeat_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    db = foo_db(SITE_A, path)
    # two app connections (e.g. two threads), fresh: their total_changes() run in step, so
    # without renumbering the second one's seqs repeat the first one's
    x = sqlite3.connect(path, isolation_level=None)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for conn, base in ((x, 0), (other, 100), (x, 200), (other, 300)):
            conn.execute("BEGIN")
            conn.execute(f"INSERT INTO foo VALUES ({base + 1}, 'b', 'c')")
            conn.execute(f"INSERT INTO foo VALUES ({base + 2}, 'b', 'c')")
            conn.execute(f"UPDATE foo SET c = 'c2' WHERE a = {base + 1}")
            conn.execute("COMMIT")
        ch = db.changes()
        assert {c.db_version for c in ch} == {1}
        assert len(ch) == 16
        assert not [s for s, n in Counter(c.seq for c in ch).items() if n > 1]
        # each transaction keeps its own write order
        order = [(crsync.unpack_pk(c.pk)[0], c.cid) for c in ch]
        for base in (0, 100, 200, 300):
            mine = [x for x in order if base < x[0] <= base + 2]
            assert mine == [(base + 1, "b"), (base + 2, "b"), (base + 2, "c"), (base + 1, "c")]
        # stable: sealed, renumbered once; another reader sees the same seqs
        again = crsync.connect(path)
        assert [c.as_tuple() for c in again.changes()] == [c.as_tuple() for c in ch]
        again.close()
    finally:
        x.close()
        other.close()
        db.close()


def test_seqs_of_one_connection_are_left_alone_when_they_do_not_repeat(tmp_path: Path) -> None:
    db = foo_db(SITE_A, tmp_path / "app.db")
    db.conn.execute("INSERT INTO foo VALUES (1, 'b', 'c'), (2, 'b', 'c')")
    raw = sorted(r[0] for r in db.conn.execute("SELECT q0 FROM foo__crsync"))
    assert raw[0] > 0
    assert sorted(c.seq for c in db.changes() if c.cid == "b") == raw


def test_backfilled_rows_get_distinct_ordered_seqs() -> None:
    db = open_db(site=SITE_A)
    db.conn.execute("CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b, c)")
    db.conn.executemany("INSERT INTO foo VALUES (?, ?, ?)", [(i, i, i) for i in range(50)])
    db.track("foo", integer_keys="app-assigned")
    with db.migrate("foo") as conn:
        conn.execute("ALTER TABLE foo ADD COLUMN d")
        conn.execute("UPDATE foo SET d = 'set' WHERE a % 2 = 0")
    db.conn.execute("INSERT INTO foo VALUES (100, 1, 1, 1)")
    seqs = [
        r[0]
        for r in db.conn.execute(
            "SELECT q0 FROM foo__crsync UNION ALL "
            "SELECT q1 FROM foo__crsync UNION ALL "
            "SELECT q2 FROM foo__crsync WHERE q2 IS NOT NULL"
        )
    ]
    assert len(seqs) == len(set(seqs)) == 51 * 2 + 26
    ch = db.changes()
    assert len({(c.db_version, c.seq) for c in ch}) == len(ch)
    assert ch[-1].pk == pack_pk((100,))  # the later write orders last


def test_the_sealing_connection_and_another_one_never_repeat_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    foo_db(SITE_A, path).close()
    db = crsync.connect(path)  # fresh connections: total_changes() in step on both
    other = sqlite3.connect(path, isolation_level=None)
    try:
        for conn in (db.conn, other, db.conn):
            conn.execute("BEGIN")
            for _ in range(3):
                conn.execute("INSERT INTO foo (b, c) VALUES ('b', 'c')")
            conn.execute("COMMIT")
        ch = db.changes()
        assert len(ch) == 18
        assert len({(c.db_version, c.seq) for c in ch}) == 18
    finally:
        other.close()
        db.close()


def test_tables_wider_than_one_seq_step_keep_order_and_uniqueness() -> None:
    db = open_db(site=SITE_A)
    ncols = 3 * SEQ_STEP  # several steps per firing
    cols = ", ".join(f"c{i}" for i in range(ncols))
    db.conn.execute(f"CREATE TABLE wide(id INTEGER PRIMARY KEY NOT NULL, {cols})")
    db.conn.execute("CREATE TABLE narrow(id INTEGER PRIMARY KEY NOT NULL, x)")
    marks = ", ".join("?" * ncols)
    db.conn.executemany(
        f"INSERT INTO wide VALUES (?, {marks})", [(i, *range(ncols)) for i in (1, 2)]
    )
    db.track("wide", integer_keys="app-assigned")  # backfilled: two rows, in one statement
    db.track("narrow", integer_keys="app-assigned")
    db.conn.execute("BEGIN")
    db.conn.execute(f"INSERT INTO wide VALUES (3, {marks})", tuple(range(ncols)))
    db.conn.execute("INSERT INTO narrow VALUES (1, 'after')")
    db.conn.execute("UPDATE wide SET id = 4 WHERE id = 3")
    db.conn.execute("INSERT INTO narrow VALUES (2, 'last')")
    db.conn.execute("COMMIT")
    ch = db.changes()
    assert len({(c.db_version, c.seq) for c in ch}) == len(ch)
    order = [(c.table, crsync.unpack_pk(c.pk)[0], c.cid) for c in ch]
    assert order[:ncols] == [("wide", 1, f"c{i}") for i in range(ncols)]
    assert order[ncols : 2 * ncols] == [("wide", 2, f"c{i}") for i in range(ncols)]
    assert order[2 * ncols] == ("narrow", 1, "x")
    assert order[2 * ncols + 1 : 2 * ncols + 3] == [("wide", 3, SENTINEL), ("wide", 4, SENTINEL)]
    assert order[2 * ncols + 3 : 3 * ncols + 3] == [("wide", 4, f"c{i}") for i in range(ncols)]
    assert order[-1] == ("narrow", 2, "x")
