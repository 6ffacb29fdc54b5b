"""The relay's merge of a push holding new rows (written without a RowState) stores what
merging the same changes one at a time stores, for integer keys (decoded by the fast path)
and others."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from crsync_relay.store import RelayStore

import crsync
from crsync import Change, InvalidChangeError, pack_pk
from crsync.protocol import TableSchema

SCHEMA = {
    "items": TableSchema(("id",), ("a", "b"), ("b",), True),
    "notes": TableSchema(("k",), ("body",)),
}
SITE = bytes([7] * 16)


def _store(path: Path) -> RelayStore:
    s = RelayStore(path)
    assert s.check_schema(dict(SCHEMA)) is None
    return s


def _state(s: RelayStore) -> list[tuple[object, ...]]:
    return s.conn.execute(
        "SELECT tbl, pk, cid, val, col_version, site_id, cl, seq, via FROM relay_cells "
        "ORDER BY tbl, pk, cid"
    ).fetchall()


def _device(path: Path, seed: int) -> crsync.Database:
    rng = random.Random(seed)
    db = crsync.connect(path)
    db.conn.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY, a TEXT, b INTEGER NOT NULL DEFAULT 0)"
    )
    db.conn.execute("CREATE TABLE notes (k TEXT PRIMARY KEY NOT NULL, body)")
    db.track("items", integer_keys="app-assigned")
    db.track("notes")
    for _ in range(80):
        i = rng.randrange(-3, 20) * rng.choice([1, 1 << 58])
        op = rng.random()
        if op < 0.5:
            db.conn.execute("INSERT OR REPLACE INTO items VALUES (?, ?, ?)", (i, str(i), op))
        elif op < 0.65:
            db.conn.execute("UPDATE items SET a = 'u' WHERE id = ?", (i,))
        elif op < 0.75:
            db.conn.execute("DELETE FROM items WHERE id = ?", (i,))
        else:
            db.conn.execute("INSERT OR REPLACE INTO notes VALUES (?, ?)", (str(i), op))
    return db


@pytest.mark.parametrize("seed", range(6))
def test_a_push_merged_at_once_stores_what_one_change_at_a_time_stores(
    tmp_path: Path, seed: int
) -> None:
    feed = _device(tmp_path / "dev.db", seed).changes()
    whole = _store(tmp_path / "whole.sqlite3")
    single = _store(tmp_path / "single.sqlite3")
    _head, wins = whole.merge_push(SITE, 1, feed, announced_only=True)
    assert wins == len(feed)
    assert sum(single.merge_push(SITE, 1, [c], announced_only=True)[1] for c in feed) == wins
    assert _state(whole) == _state(single)
    assert whole.merge_push(SITE, 1, feed, announced_only=True)[1] == 0


def test_refusals_name_the_first_bad_change_in_push_order(tmp_path: Path) -> None:
    s = _store(tmp_path / "s.sqlite3")
    ok = Change("items", pack_pk([1]), "a", "x", 1, 1, SITE, 1, 0)
    null = Change("items", pack_pk([2]), "b", None, 1, 1, SITE, 1, 1)
    unknown = Change("items", pack_pk([3]), "zz", 1, 1, 1, SITE, 1, 2)
    with pytest.raises(InvalidChangeError, match=r"change #1: .* NOT NULL"):
        s.merge_push(SITE, 1, [ok, null, unknown], announced_only=True)
    with pytest.raises(InvalidChangeError, match=r"change #1: .* no announced column"):
        s.merge_push(SITE, 1, [ok, unknown, null], announced_only=True)
    long = Change("items", pack_pk([4]), "c" * 3000, 1, 1, 1, SITE, 1, 3)
    with pytest.raises(InvalidChangeError, match="change #2: name longer"):
        s.merge_push(SITE, 1, [ok, unknown, long], announced_only=True)
    with pytest.raises(InvalidChangeError, match=r"pk .* is not an integer"):
        s.merge_push(SITE, 1, [ok._replace(pk=pack_pk(["1"]))], announced_only=True)
    assert _state(s) == []


def test_a_first_version_over_the_cell_budget_is_read_in_parts(tmp_path: Path) -> None:
    s = _store(tmp_path / "s.sqlite3")
    big = [Change("items", pack_pk([i]), "a", f"v{i}", 1, 1, SITE, 1, i) for i in range(47)]
    small = [Change("notes", pack_pk([f"k{i}"]), "body", i, 1, 2, SITE, 1, i) for i in range(3)]
    s.merge_push(SITE, 1, big, announced_only=True)
    s.merge_push(SITE, 2, small, announced_only=True)
    whole = s.read_page(0, None, max_cells=10**6, split=False)
    assert whole.complete and len(whole.changes) == 50
    seen: list[Change] = []
    page = s.read_page(0, None, max_cells=10)
    assert page.resume is not None and page.upto == 1 and len(page.changes) == 10
    while page.resume is not None:
        seen += page.changes
        page = s.read_page(0, None, max_cells=10, after=page.resume)
    seen += page.changes
    assert page.upto == 1 and not page.complete
    assert sorted(seen) == sorted(c for c in whole.changes if c.table == "items")
    rest = s.read_page(1, None, max_cells=10)
    assert rest.complete and rest.resume is None
    assert sorted(rest.changes) == sorted(c for c in whole.changes if c.table == "notes")
    assert s.read_page(0, SITE, max_cells=10).changes == []  # the pusher's own cells: none
