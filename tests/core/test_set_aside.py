"""Rows another device sent that this database cannot apply are set aside with their reason;
the rest of the batch applies (security review H2, device side)."""

from __future__ import annotations

import math

import pytest

import crsync
from crsync import Change, InvalidChangeError, pack_pk

SITE = bytes(range(16))


def _db(ddl: str, table: str = "t", **track: object) -> crsync.Database:
    db = crsync.connect(":memory:")
    db.conn.execute(ddl)
    db.track(table, **track)  # type: ignore[arg-type]
    return db


GOOD = [
    Change("t", pack_pk(["ok"]), "v", "fine", 1, 1, SITE, 1, 0),
    Change("t", pack_pk(["ok2"]), "v", "also fine", 1, 1, SITE, 1, 1),
]

POISON = {
    "not-null": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL DEFAULT '')",
        Change("t", pack_pk(["bad"]), "v", None, 1, 1, SITE, 1, 2),
        "NOT NULL",
    ),
    "check": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT CHECK (length(v) < 10))",
        Change("t", pack_pk(["bad"]), "v", "x" * 50, 1, 1, SITE, 1, 2),
        "CHECK",
    ),
    "strict": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT, n INTEGER) STRICT",
        Change("t", pack_pk(["bad"]), "n", "not a number", 1, 1, SITE, 1, 2),
        "cannot store",
    ),
    "wrong-arity": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT)",
        Change("t", pack_pk(["a", "b"]), "v", "x", 1, 1, SITE, 1, 2),
        "values",
    ),
    "nan-key": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT)",
        Change("t", pack_pk([math.nan]), "v", "x", 1, 1, SITE, 1, 2),
        "NOT NULL",
    ),
    "lone-surrogate-key": (
        "CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT)",
        Change("t", b"\x01\x0b\x03\xed\xa0\x80", "v", "x", 1, 1, SITE, 1, 2),
        "surrogate",
    ),
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_a_row_this_database_cannot_apply_is_set_aside_and_the_rest_applies(case: str) -> None:
    ddl, bad, why = POISON[case]
    db = _db(ddl)
    wins, rejected = db.merge_setting_aside([GOOD[0], bad, GOOD[1]])
    assert rejected == 1 and wins == 2
    assert sorted(r[0] for r in db.conn.execute("SELECT id FROM t")) == ["ok", "ok2"]
    [kept] = db.rejected_changes()
    assert kept.change == bad
    assert why in kept.reason
    assert db.rejected_count() == 1


def test_text_key_in_an_integer_primary_key_is_set_aside() -> None:
    db = _db("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", integer_keys="app-assigned")
    good = Change("t", pack_pk([1]), "v", "fine", 1, 1, SITE, 1, 0)
    bad = Change("t", pack_pk(["abc"]), "v", "x", 1, 1, SITE, 1, 1)
    assert db.merge_setting_aside([good, bad]) == (1, 1)
    assert "mismatch" in db.rejected_changes()[0].reason


def test_plain_merge_stays_all_or_nothing() -> None:
    ddl, bad, _ = POISON["not-null"]
    db = _db(ddl)
    with pytest.raises(crsync.CrsyncError):
        db.merge([GOOD[0], bad])
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert db.rejected_count() == 0


def test_malformed_changes_still_fail_the_whole_batch() -> None:
    db = _db("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT)")
    with pytest.raises(InvalidChangeError):
        db.merge_setting_aside([GOOD[0], ("t", b"", "v", 1, 1, 1, SITE, 1, 0)])


def test_rejected_rows_apply_after_the_schema_is_fixed_and_can_be_dropped() -> None:
    ddl, bad, _ = POISON["check"]
    db = _db(ddl)
    db.merge_setting_aside([bad])
    assert db.retry_rejected() == 0  # still impossible: set aside again
    assert db.rejected_count() == 1
    with db.migrate("t") as conn:  # the app's next version relaxes the CHECK (12-step)
        conn.execute("CREATE TABLE t_new (id TEXT PRIMARY KEY NOT NULL, v TEXT)")
        conn.execute("INSERT INTO t_new SELECT id, v FROM t")
        conn.execute("DROP TABLE t")
        conn.execute("ALTER TABLE t_new RENAME TO t")
    assert db.retry_rejected("t") == 1
    assert db.conn.execute("SELECT v FROM t WHERE id = 'bad'").fetchone() == ("x" * 50,)
    assert db.rejected_count() == 0
    db.merge_setting_aside([Change("t", pack_pk(["b2"]), "-1", None, 2, 1, SITE, 2, 0)])
    db.merge_setting_aside([POISON["nan-key"][1]])
    assert db.drop_rejected() == 1 and db.rejected_count() == 0


def test_many_bad_rows_among_many_good_ones() -> None:
    db = _db("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT NOT NULL DEFAULT '')")
    batch = [
        Change("t", pack_pk([f"k{i}"]), "v", None if i % 97 == 0 else f"v{i}", 1, 1, SITE, 1, i)
        for i in range(2000)
    ]
    wins, rejected = db.merge_setting_aside(batch)
    bad = sum(1 for i in range(2000) if i % 97 == 0)
    assert rejected == bad and wins == 2000 - bad
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 2000 - bad
