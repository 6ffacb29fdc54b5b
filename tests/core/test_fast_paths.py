"""The fast representations and fast paths of the feed and the merge agree with the general
ones: ``Change`` keeps its value-type contract, a batch merged at once (fresh rows written
without a RowState) ends where the same changes merged one at a time end, and the value
order's same-class shortcut is cr-sqlite's order."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import attrs
import pytest
from core_helpers import SITE_A, SITE_B, SITE_C, canon, open_db, rows
from crdt_model import cmp as reference_order
from hypothesis import given, settings
from hypothesis import strategies as st

import crsync
from crsync import Change, pack_pk, unpack_pk
from crsync.change import validate_changes
from crsync.pack import small_int_key
from crsync.values import compare_values

DDL = "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b REAL, c BLOB)"
DDL2 = "CREATE TABLE k2 (x TEXT NOT NULL, y INTEGER NOT NULL, v, PRIMARY KEY (x, y))"


def test_change_is_an_immutable_value_with_its_attrs_api() -> None:
    c = Change("t", pack_pk([1]), "a", "x", 1, 2, SITE_A, 1, 3)
    with pytest.raises(AttributeError):
        c.val = "y"  # type: ignore[misc]
    assert attrs.evolve(c, val="y") == Change("t", pack_pk([1]), "a", "y", 1, 2, SITE_A, 1, 3)
    assert attrs.asdict(c)["seq"] == 3
    assert [f.name for f in attrs.fields(Change)] == [
        "table", "pk", "cid", "val", "col_version", "db_version", "site_id", "cl", "seq",
    ]  # fmt: skip
    assert c.as_tuple() == ("t", pack_pk([1]), "a", "x", 1, 2, SITE_A, 1, 3)
    assert type(c.as_tuple()) is tuple
    assert hash(c) == hash(Change(*c.as_tuple()))
    assert Change(**attrs.asdict(c)) == c


def test_decoded_rows_become_changes_and_bad_rows_are_still_refused() -> None:
    good = ["t", pack_pk([1]), "a", "x", 1, 2, SITE_A, 1, 3]
    [c] = validate_changes([good])
    assert type(c) is Change and c.as_tuple() == tuple(good)
    [b] = validate_changes([["t", pack_pk([1]), "a", True, 1, 2, SITE_A, 1, 3]])
    assert b.val == 1 and type(b.val) is int  # normalised by the careful path
    with pytest.raises(crsync.InvalidChangeError, match="change #1"):
        validate_changes([good, ["t", pack_pk([1]), "a", float("nan"), 1, 2, SITE_A, 1, 3]])


def _writes(db: crsync.Database, rng: random.Random) -> None:
    """Inserts, updates, deletes, re-inserts and key changes on two tables."""
    c = db.conn
    for _ in range(60):
        op = rng.random()
        i = rng.randrange(12)
        if op < 0.45:
            c.execute(
                "INSERT OR REPLACE INTO t VALUES (?, ?, ?, ?)",
                (i, rng.choice(["x", "y", None]), rng.random(), rng.randbytes(2)),
            )
        elif op < 0.65:
            c.execute("UPDATE t SET a = ? WHERE id = ?", (rng.choice(["p", "q", 7]), i))
        elif op < 0.75:
            c.execute("DELETE FROM t WHERE id = ?", (i,))
        elif op < 0.8:
            c.execute("UPDATE OR IGNORE t SET id = ? WHERE id = ?", (i + 20, i))
        else:
            c.execute(
                "INSERT OR REPLACE INTO k2 VALUES (?, ?, ?)",
                (rng.choice("ab"), i, rng.choice([1, 1.5, "s", b"b", None])),
            )


def _state(db: crsync.Database) -> tuple[Any, ...]:
    feed = sorted(
        (c.table, unpack_pk(c.pk), c.cid, canon(c.val), c.col_version, c.site_id, c.cl, c.seq)
        for c in db.changes()
    )
    return rows(db.conn, "t"), rows(db.conn, "k2"), feed


@pytest.mark.parametrize("seed", range(8))
def test_a_batch_merged_at_once_ends_where_one_change_at_a_time_ends(seed: int) -> None:
    rng = random.Random(seed)
    sources = []
    for site in (SITE_A, SITE_B):
        db = open_db(site=site)
        for ddl in (DDL, DDL2):
            db.conn.execute(ddl)
        db.track("t", integer_keys="app-assigned")
        db.track("k2")
        _writes(db, rng)
        sources.append(db)
    # Two authors' changes, interleaved, plus an integer key sent as a real (same row).
    batch = [c for db in sources for c in db.changes()]
    rng.shuffle(batch)
    batch.append(Change("t", pack_pk([3.0]), "a", "real-key", 9, 1, SITE_C, 1, 0))
    _, replica = _merged_at_once_and_one_by_one(batch)
    assert replica.merge(batch) == 0  # and everything loses the second time


def _merged_at_once_and_one_by_one(batch: list[Change]) -> tuple[int, crsync.Database]:
    """Merge ``batch`` into a fresh replica at once and into another one change at a time;
    check both end alike and won as many changes. Returns the wins and the first replica."""
    replicas = []
    for _ in range(2):
        r = open_db(site=bytes(16))
        for ddl in (DDL, DDL2):
            r.conn.execute(ddl)
        r.track("t", integer_keys="app-assigned")
        r.track("k2")
        replicas.append(r)
    at_once = replicas[0].merge(batch)
    one_by_one = sum(replicas[1].merge([c]) for c in batch)
    assert at_once == one_by_one
    assert _state(replicas[0]) == _state(replicas[1])
    return at_once, replicas[0]


def test_a_fresh_row_with_two_versions_of_one_cell_keeps_the_greater() -> None:
    r = open_db(site=bytes(16))
    r.conn.execute(DDL)
    r.track("t", integer_keys="app-assigned")
    pk = pack_pk([1])
    batch = [
        Change("t", pk, "a", "new", 2, 5, SITE_A, 1, 1),
        Change("t", pk, "a", "old", 1, 4, SITE_A, 1, 0),
        Change("t", pk, "b", 2.5, 1, 4, SITE_A, 1, 2),
    ]
    assert r.merge(batch) == 2
    assert r.conn.execute("SELECT a, b FROM t").fetchall() == [("new", 2.5)]


def test_a_fresh_row_whose_table_row_exists_without_metadata_is_updated() -> None:
    r = open_db(site=bytes(16))
    r.conn.execute(DDL)
    r.track("t", integer_keys="app-assigned")
    with r.migrate("t"):  # a row written while capture was off: no metadata
        r.conn.execute("INSERT INTO t VALUES (1, 'local', 1.0, x'00')")
    r.conn.execute("DELETE FROM t__crsync")
    assert r.merge([Change("t", pack_pk([1]), "a", "remote", 1, 1, SITE_A, 1, 0)]) == 1
    assert r.conn.execute("SELECT a FROM t").fetchall() == [("remote",)]


values = st.one_of(
    st.none(),
    st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(max_size=6),
)


@settings(max_examples=600, deadline=None)
@given(values, values)
def test_value_order_shortcut_is_cr_sqlite_order(a: Any, b: Any) -> None:
    assert compare_values(a, b) == reference_order(a, b)


def test_value_order_of_text_is_utf8_byte_order_including_lone_surrogates() -> None:
    points = [0, 0x7F, 0x80, 0x7FF, 0x800, 0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFFFF, 0x10000]
    texts = [chr(p) + s for p in points for s in ("", "a", chr(0x10FFFF))]
    for a in texts:
        for b in texts:
            ab, bb = a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
            assert compare_values(a, b) == (ab > bb) - (ab < bb)


@given(st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1))
def test_small_int_key_is_unpack_pk_or_declines(v: int) -> None:
    blob = pack_pk([v])
    k = small_int_key(blob)
    assert k is None or (k,) == unpack_pk(blob)
    if 0 <= v < 1 << 56:
        assert k == v


def test_small_int_key_declines_other_keys() -> None:
    for key in ([1.0], ["1"], [b"1"], [1, 2], [-1]):
        assert small_int_key(pack_pk(key)) is None
    assert small_int_key(bytes([1, 0x11, 0, 5])) == 5 == unpack_pk(bytes([1, 0x11, 0, 5]))[0]
    assert small_int_key(bytes([1, 0x11, 5])) is None  # truncated: left to unpack_pk


def test_keys_take_the_key_columns_affinity_before_rows_are_grouped() -> None:
    r = open_db(site=bytes(16))
    r.conn.execute("CREATE TABLE s (k TEXT PRIMARY KEY NOT NULL, a, b)")
    r.track("s")
    batch = [
        Change("s", pack_pk([5]), "a", "by int", 1, 1, SITE_A, 1, 0),
        Change("s", pack_pk(["5"]), "b", "by text", 1, 1, SITE_A, 1, 1),
    ]
    assert r.merge(batch) == 2
    assert r.conn.execute("SELECT k, typeof(k), a, b FROM s").fetchall() == [
        ("5", "text", "by int", "by text")
    ]


def test_decoding_a_frame_leaves_the_garbage_collector_as_it_found_it() -> None:
    import gc

    from crsync import protocol as p

    frame = p.encode(p.Changes(0, 1, [Change("t", pack_pk([1]), "a", 1, 1, 1, SITE_A, 1, 0)]))
    was = gc.isenabled()
    try:
        gc.enable()
        assert len(p.decode(frame).changes) == 1  # type: ignore[union-attr]
        assert gc.isenabled()
        with pytest.raises(crsync.ProtocolError):
            p.decode(b"\xc1")  # not msgpack
        assert gc.isenabled()
        gc.disable()
        p.decode(frame)
        assert not gc.isenabled()
    finally:
        if was:
            gc.enable()


DDL_ANY = "CREATE TABLE t (id INTEGER PRIMARY KEY, a, b REAL)"  # a: no affinity
TIE_VALUES = [None, -3, 0, 1, 2, 1.0, 1.5, -0.0, "", "1", "a", "é", b"", b"1", b"\x00"]


def test_a_merge_into_stored_rows_decides_each_change_as_the_rules_do() -> None:
    """Changes against stored rows (ties on every pair of storage classes, older and newer
    clocks, deletes and creates the row already has) win exactly when cr-sqlite's order says
    so, whether the row's other changes in the batch lose (the quick path) or not."""
    pk = pack_pk([1])
    for local in TIE_VALUES:
        for incoming in TIE_VALUES:
            r = open_db(site=bytes(16))
            r.conn.execute(DDL_ANY)
            r.track("t", integer_keys="app-assigned")
            assert r.merge([Change("t", pk, "a", local, 3, 1, SITE_A, 1, 0)]) == 1
            batch = [
                Change("t", pk, "a", incoming, 2, 9, SITE_B, 1, 1),  # older clock: loses
                Change("t", pk, "-1", None, 1, 9, SITE_B, 1, 2),  # the row's own cl: loses
                Change("t", pk, "a", incoming, 3, 9, SITE_B, 1, 3),  # tie: the value decides
            ]
            want = reference_order(incoming, local) > 0
            assert r.merge(batch) == int(want), (local, incoming)
            [(got,)] = r.conn.execute("SELECT a FROM t").fetchall()
            assert canon(got) == canon(incoming if want else local), (local, incoming)
            # A newer clock in the same row wins whatever the tie did.
            assert r.merge([*batch, Change("t", pk, "b", 2.5, 1, 9, SITE_B, 1, 4)]) == 1


def test_a_stored_row_without_its_table_row_compares_ties_with_null() -> None:
    r = open_db(site=bytes(16))
    r.conn.execute(DDL_ANY)
    r.track("t", integer_keys="app-assigned")
    pk = pack_pk([1])
    assert r.merge([Change("t", pk, "a", "x", 1, 1, SITE_A, 1, 0)]) == 1
    # The table row goes behind the triggers' back; its metadata (live clocks) stays.
    r.conn.executescript(
        "BEGIN; UPDATE crsync_clock SET merging = 1; DELETE FROM t;"
        " UPDATE crsync_clock SET merging = 0; COMMIT;"
    )
    assert r.merge([Change("t", pk, "a", None, 1, 2, SITE_B, 1, 0)]) == 0  # NULL ties NULL
    assert r.merge([Change("t", pk, "a", b"", 1, 2, SITE_B, 1, 0)]) == 1  # a blob beats it
    assert r.conn.execute("SELECT id, a FROM t").fetchall() == [(1, b"")]


def test_fresh_rows_with_the_same_columns_are_written_alike_but_a_later_life_is_not() -> None:
    """Never-seen rows are grouped by the columns they bring: a group is written column by
    column, except rows of it not in their first life (causal length above 1), which go
    through the rules; the result is the same as merging each change alone."""
    batch = []
    for i, cl in enumerate((1, 3, 1, 1)):
        pk = pack_pk([i])
        site = (SITE_A, SITE_B, SITE_C, SITE_A)[i]
        batch += [
            Change("t", pk, "c", b"\x00", 1, 7, site, cl, 3 * i),
            Change("t", pk, "a", f"row {i}", 2, 7, site, cl, 3 * i + 1),
        ]
    batch.append(Change("t", pack_pk([9]), "b", 0.5, 1, 8, SITE_B, 1, 0))  # another layout
    assert _merged_at_once_and_one_by_one(batch)[0] == 9


def test_text_that_is_not_valid_unicode_is_refused_with_a_clear_error_and_nothing_applied(
    tmp_path: Path,
) -> None:
    db = crsync.connect(tmp_path / "a.db")
    db.conn.execute("CREATE TABLE t (id TEXT PRIMARY KEY NOT NULL, v TEXT)")
    db.track("t")
    site = bytes(range(1, 17))
    good = Change("t", pack_pk(["ok"]), "v", "fine", 1, 1, site, 1, 0)
    lone = Change("t", pack_pk(["bad"]), "v", "\ud800", 1, 1, site, 1, 1)
    with pytest.raises(crsync.InvalidChangeError, match="not valid Unicode"):
        db.merge([good, lone])
    assert db.conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
    assert db.merge([good]) == 1
    db.close()
