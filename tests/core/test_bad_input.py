"""Malformed changes are refused with InvalidChangeError and leave the database untouched."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from core_helpers import SITE_A, SITE_B, dump, open_db

import crsync
from crsync import Change, InvalidChangeError, pack_pk

GOOD = ("t", pack_pk(["r1"]), "a", 1, 1, 1, SITE_A, 1, 0)


def with_field(i: int, v: Any) -> tuple[Any, ...]:
    t = list(GOOD)
    t[i] = v
    return tuple(t)


BAD: dict[str, Any] = {
    "table not a string": with_field(0, 1),
    "empty table": with_field(0, ""),
    "pk not bytes": with_field(1, "r1"),
    "empty pk": with_field(1, b""),
    "cid none": with_field(2, None),
    "empty cid": with_field(2, ""),
    "val is a list": with_field(3, [1]),
    "val is a dict": with_field(3, {"a": 1}),
    "val is an object": with_field(3, object()),
    "val is NaN": with_field(3, math.nan),
    "val int too big": with_field(3, 1 << 64),
    "col_version negative": with_field(4, -1),
    "col_version bool": with_field(4, True),
    "col_version float": with_field(4, 1.0),
    "col_version str": with_field(4, "1"),
    "col_version huge": with_field(4, 1 << 63),
    "db_version negative": with_field(5, -5),
    "db_version float": with_field(5, 2.0),
    "db_version none": with_field(5, None),
    "site 15 bytes": with_field(6, b"\x01" * 15),
    "site 17 bytes": with_field(6, b"\x01" * 17),
    "site none": with_field(6, None),
    "site text": with_field(6, "a" * 16),
    "cl zero": with_field(7, 0),
    "cl negative": with_field(7, -1),
    "cl none": with_field(7, None),
    "cl bool": with_field(7, True),
    "seq negative": with_field(8, -1),
    "seq float": with_field(8, 0.0),
    "missing cl (8 fields)": GOOD[:7] + GOOD[8:],
    "10 fields": (*GOOD, 0),
    "not a sequence": {"table": "t"},
    "a string": "t,pk,a,1",
    "none": None,
    "pk truncated": with_field(1, bytes.fromhex("010b057231")),
    "pk trailing bytes": with_field(1, pack_pk(["r1"]) + b"\x00"),
    "pk type code 6": with_field(1, bytes.fromhex("0106")),
    "pk count too large": with_field(1, bytes.fromhex("020b027231")),
    "pk two values for one column": with_field(1, pack_pk(["r1", 2])),
    "pk zero values": with_field(1, bytes.fromhex("00")),
    "pk contains NULL": with_field(1, pack_pk([None])),
}


@pytest.fixture
def db(tmp_path: Path) -> crsync.Database:
    d = open_db(tmp_path / "b.db", site=SITE_B)
    d.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)")
    d.track("t")
    d.conn.execute("INSERT INTO t VALUES('r0', 0, 0)")
    d.conn.execute("UPDATE t SET a = 5")
    _ = d.db_version
    return d


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_bad_change_is_refused_and_nothing_changes(db: crsync.Database, bad: Any) -> None:
    before, v = dump(db.conn), db.db_version
    with pytest.raises(InvalidChangeError):
        db.merge([bad])
    assert dump(db.conn) == before
    assert db.db_version == v


@pytest.mark.parametrize("bad", list(BAD.values()), ids=list(BAD))
def test_bad_change_last_in_a_large_valid_batch_refuses_the_whole_batch(
    db: crsync.Database, bad: Any
) -> None:
    batch: list[Any] = [
        Change("t", pack_pk([f"k{i}"]), c, i, 1, 1, SITE_A, 1, 2 * i + j)
        for i in range(2000)
        for j, c in enumerate(("a", "b"))
    ]
    batch.append(("t", pack_pk(["r0"]), "a", 99, 9, 1, SITE_A, 1, 0))  # would win
    batch.append(("u", pack_pk(["z"]), "a", 1, 1, 1, SITE_A, 1, 0))  # unknown table
    before, v = dump(db.conn), db.db_version
    with pytest.raises(InvalidChangeError):
        db.merge([*batch, bad])
    assert dump(db.conn) == before
    assert db.db_version == v
    assert db.merge(batch) == len(batch) - 1  # the valid part merges fine afterwards


def test_bad_pk_for_an_unknown_table_is_refused_not_kept(db: crsync.Database) -> None:
    before = dump(db.conn)
    with pytest.raises(InvalidChangeError):
        db.merge([("later", b"\x01\x0b\x09", "a", 1, 1, 1, SITE_A, 1, 0)])
    assert dump(db.conn) == before
    assert db.pending_count() == 0


def test_merge_refuses_a_non_iterable(db: crsync.Database) -> None:
    with pytest.raises((InvalidChangeError, TypeError)):
        db.merge(5)  # type: ignore[arg-type]


def test_invalid_change_error_names_the_change_and_field(db: crsync.Database) -> None:
    batch = [GOOD, GOOD, with_field(7, 0)]
    with pytest.raises(InvalidChangeError, match=r"#2.*cl"):
        db.merge(batch)


def test_invalid_change_error_is_a_crsync_error() -> None:
    assert issubclass(InvalidChangeError, crsync.CrsyncError)


# ---------------------------------------------------------------- SQLite failures mid-write


def _batch() -> list[Change]:
    return [Change("t", pack_pk([f"k{i}"]), "a", i, 1, 1, SITE_A, 1, i) for i in range(500)] + [
        Change("t", pack_pk(["r0"]), "b", "boom", 5, 1, SITE_A, 1, 999)
    ]


def test_user_trigger_raising_abort_rolls_back_the_whole_merge(db: crsync.Database) -> None:
    db.conn.execute(
        "CREATE TRIGGER no_boom AFTER UPDATE ON t WHEN NEW.b = 'boom' "
        "BEGIN SELECT RAISE(ABORT, 'no boom allowed'); END"
    )
    before, v = dump(db.conn), db.db_version
    with pytest.raises(crsync.CrsyncError, match="no boom allowed"):
        db.merge(_batch())
    assert dump(db.conn) == before
    assert db.db_version == v
    assert not db.conn.in_transaction
    # the database still works: a later good merge and local writes are fine
    assert db.merge(_batch()[:-1]) == 500
    db.conn.execute("INSERT INTO t VALUES('after', 1, 1)")
    assert any(c.pk == pack_pk(["after"]) for c in db.changes())


def test_check_constraint_violated_by_merged_value_rolls_back(tmp_path: Path) -> None:
    d = open_db(tmp_path / "c.db", site=SITE_B)
    d.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b CHECK (b <> 'boom'))")
    d.track("t")
    d.conn.execute("INSERT INTO t VALUES('r0', 0, 0)")
    v = d.db_version
    before = dump(d.conn)
    with pytest.raises(crsync.CrsyncError):
        d.merge(_batch())
    assert dump(d.conn) == before
    assert d.db_version == v
    # merging flag is cleared: local writes are captured again
    d.conn.execute("UPDATE t SET a = 42")
    assert [c.val for c in d.changes(since=v)] == [42]


def test_merge_is_refused_while_another_connection_holds_the_write_lock(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    d = crsync.connect(path, busy_timeout_ms=50)
    d.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)")
    d.track("t")
    other = crsync.connect(path)
    other.conn.execute("BEGIN IMMEDIATE")
    before = dump(other.conn)
    with pytest.raises(crsync.CrsyncError):
        d.merge([GOOD])
    other.conn.execute("ROLLBACK")
    assert dump(d.conn) == before
    assert d.merge([GOOD]) == 1
