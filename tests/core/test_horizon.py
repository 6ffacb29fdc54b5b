"""Tombstones below the relay's horizon on a device (docs/concepts.md, "Tombstones and the
horizon"): merging collected tombstones, compacting a device's own record of a delete, the
format-2 migration, staged catch-up units and the metadata statistics.

``tests/core/fixtures/format1.db`` was written by crsync's format-1 code (the commit before
format 2): two tracked tables (``todos`` with one text key, ``notes`` with a two-column key),
20 rows each, updates, deletes and a re-insert, and peer positions for ``relay:s``."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crsync
from crsync import Change, positions
from crsync import protocol as p
from crsync.change import COLLECTED_SITE, SENTINEL
from crsync.database import FORMAT_VERSION

FIXTURES = Path(__file__).parent / "fixtures"
KEY = "relay:s"
TODOS = "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0)"


def _db(path: Path | str = ":memory:") -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(TODOS)
    db.track("todos")
    return db


def _collected(c: Change) -> Change:
    """The collected form of a tombstone (docs/protocol.md rule 11)."""
    return Change(c.table, c.pk, SENTINEL, None, c.cl, 0, COLLECTED_SITE, c.cl, 0)


def _state(db: crsync.Database) -> tuple[list[Any], list[Any]]:
    """The table's rows and each key's causal length."""
    rows = db.conn.execute("SELECT * FROM todos ORDER BY id").fetchall()
    cls = db.conn.execute('SELECT p0, cl FROM "todos__crsync" ORDER BY p0').fetchall()
    return rows, cls


def _resolved(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """The metadata rows of ``table`` with site ordinals replaced by site ids (a copied file
    moves to a new site id when opened: the ordinals change, the sites do not)."""
    sites = dict(conn.execute("SELECT ordinal, site_id FROM crsync_sites"))
    cols = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}__crsync")')]
    site_cols = {i for i, c in enumerate(cols) if c == "ss" or (c[0] == "s" and c[1:].isdigit())}
    return [
        tuple(sites[v] if i in site_cols and v is not None else v for i, v in enumerate(row))
        for row in conn.execute(f'SELECT * FROM "{table}__crsync" ORDER BY 1, 2')
    ]


def _meta(db: crsync.Database, key: str) -> tuple[Any, ...]:
    row = db.conn.execute(
        'SELECT cl, sd, ss, sq, dbv FROM "todos__crsync" WHERE p0 = ?', (key,)
    ).fetchone()
    return tuple(row)


# ---------------------------------------------------------------------------- merging


op = st.tuples(
    st.sampled_from(["insert", "update", "delete"]),
    st.sampled_from(["a", "b", "c", "d"]),
    st.integers(0, 3),
)


def _apply(db: crsync.Database, ops: list[tuple[str, str, int]]) -> None:
    for kind, key, v in ops:
        if kind == "insert":
            db.conn.execute(
                "INSERT INTO todos (id, title) VALUES (?, ?) ON CONFLICT DO NOTHING", (key, str(v))
            )
        elif kind == "update":
            db.conn.execute("UPDATE todos SET title = ?, done = ? WHERE id = ?", (str(v), v, key))
        else:
            db.conn.execute("DELETE FROM todos WHERE id = ?", (key,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    local=st.lists(op, max_size=12),
    remote=st.lists(op, max_size=12),
    later=st.lists(op, max_size=8),
)
def test_a_collected_tombstone_merges_to_the_state_the_original_tombstone_gives(
    local: list[tuple[str, str, int]],
    remote: list[tuple[str, str, int]],
    later: list[tuple[str, str, int]],
) -> None:
    # A device with its own history merges a remote device's changes twice over: once as
    # they are, once with every tombstone collected (as a relay serves it below its horizon);
    # then the remote device's later writes (re-inserts of deleted keys included).
    a = _db()
    _apply(a, remote)
    upto, changes = a.changes_since(0)
    full, collected = _db(), _db()
    base = _db()
    _apply(base, local)
    for d in (full, collected):
        d.merge(base.changes())
    full.merge(changes)
    collected.merge([_collected(c) if c.cl % 2 == 0 else c for c in changes])
    assert _state(full) == _state(collected)
    _apply(a, later)
    more = a.changes(since=upto)
    full.merge(more)
    collected.merge(more)
    assert _state(full) == _state(collected)
    # Merged again (a relay resending its graves), nothing changes.
    before = _state(collected)
    collected.merge([_collected(c) for c in changes if c.cl % 2 == 0])
    assert _state(collected) == before


def test_the_zero_site_gets_a_site_ordinal_like_any_site() -> None:
    a, b = _db(), _db()
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('k', 'x')")
    a.conn.execute("DELETE FROM todos")
    b.merge(a.changes())
    (tomb,) = [c for c in a.changes() if c.cid == SENTINEL]
    c = _db()
    c.conn.execute("INSERT INTO todos (id, title) VALUES ('k', 'live here')")
    assert c.merge([_collected(tomb)]) == 1  # cl 2 beats the local cl 1: deleted
    assert c.conn.execute("SELECT count(*) FROM todos").fetchone()[0] == 0
    ords = dict(c.conn.execute("SELECT site_id, ordinal FROM crsync_sites"))
    assert ords[COLLECTED_SITE] > 0
    # The merged delete is in the feed like any merged change (as the zero site's).
    (fed,) = c.changes()
    assert (fed.cid, fed.cl, fed.site_id, fed.seq) == (SENTINEL, 2, COLLECTED_SITE, 0)
    # A collected tombstone of the causal length the row has changes nothing.
    assert c.merge([_collected(tomb)]) == 0


# ---------------------------------------------------------------------------- compaction


def _synced(path: Path) -> crsync.Database:
    """A database whose positions with relay ``KEY`` are recorded under epoch E."""
    db = _db(path)
    positions.reset(db, KEY, "E")
    return db


def _pull(db: crsync.Database, version: int, changes: list[Change] | None = None) -> None:
    positions.merge_and_record(db, changes or [], KEY, "E", version)


def test_tombstones_below_the_horizon_are_compacted_and_keep_key_reuse_right(
    tmp_path: Path,
) -> None:
    other = _db()
    other.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [(f"r{i}", "x") for i in range(4)]
    )
    other.conn.execute("DELETE FROM todos WHERE id IN ('r0', 'r1')")
    db = _synced(tmp_path / "d.db")
    db.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [(f"k{i}", "x") for i in range(4)]
    )
    db.conn.execute("DELETE FROM todos WHERE id IN ('k0', 'k1')")
    pushed = db.db_version
    positions.record(db, KEY, "push", "E", pushed)  # the relay acknowledged them
    db.conn.execute("DELETE FROM todos WHERE id = 'k2'")  # not pushed yet
    _pull(db, 5, other.changes())  # relay versions up to 5 merged
    peer_view = [c for c in db.changes() if crsync.unpack_pk(c.pk)[0].startswith("k")]
    # The first horizon sets the mark (the latest pull): nothing is compacted yet.
    assert positions.apply_horizon(db, KEY, 3) == 0
    _pull(db, 9)
    # A horizon below the mark compacts nothing; one at or above it compacts what the mark
    # covers: own acknowledged deletes and merged deletes, not own unacknowledged ones.
    assert positions.apply_horizon(db, KEY, 4) == 0
    assert positions.apply_horizon(db, KEY, 5) == 4
    for key in ("k0", "k1", "r0", "r1"):
        assert _meta(db, key) == (2, None, None, None, None)
    assert _meta(db, "k2")[1:] != (None, None, None, None)
    # The normal feed never sends a compacted row.
    assert sorted(crsync.unpack_pk(c.pk)[0] for c in db.changes() if c.cl % 2 == 0) == ["k2"]
    # A full push sends them as collected tombstones.
    assert sorted(positions.collected_tombstones(db)) == sorted(
        Change("todos", crsync.pack_pk([k]), SENTINEL, None, 2, 0, COLLECTED_SITE, 2, 0)
        for k in ("k0", "k1", "r0", "r1")
    )
    # Key reuse after compaction: the insert trigger gives the re-insert cl 3, which wins on
    # a device holding the full tombstone and on one that only got the collected one.
    since = db.db_version
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('k0', 'back')")
    (row,) = [c for c in db.changes(since=since) if c.cid == SENTINEL]
    assert (crsync.unpack_pk(row.pk), row.cl, row.site_id) == (("k0",), 3, db.site_id)
    full, fresh = _db(), _db()
    full.merge(peer_view)
    fresh.merge(positions.collected_tombstones(db) + db.changes(since=0))
    full.merge(db.changes(since=since))
    for d in (full, fresh):
        assert d.conn.execute(
            "SELECT id, title FROM todos WHERE id LIKE 'k%' ORDER BY id"
        ).fetchall() == [
            ("k0", "back"),
            ("k3", "x"),
        ]
    # A merged change of the deleted incarnation (cl 2) loses to nothing stale.
    stale = Change("todos", crsync.pack_pk(["k1"]), "title", "old", 9, 9, b"\x07" * 16, 1, 0)
    assert db.merge([stale]) == 0
    assert db.conn.execute("SELECT count(*) FROM todos WHERE id = 'k1'").fetchone() == (0,)


def test_the_horizon_never_moves_back_and_belongs_to_the_epoch(tmp_path: Path) -> None:
    db = _synced(tmp_path / "d.db")
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('k', 'x')")
    db.conn.execute("DELETE FROM todos")
    positions.record(db, KEY, "push", "E", db.db_version)
    _pull(db, 3)
    assert positions.apply_horizon(db, KEY, 1) == 0  # sets the mark at 3
    assert positions.apply_horizon(db, KEY, 2) == 0  # below the mark
    assert positions.apply_horizon(db, KEY, 0) == 0  # moving back: ignored
    assert db.metadata_stats().horizon == 2
    positions.reset(db, KEY, "F")  # another epoch: the mark is gone
    assert positions.apply_horizon(db, KEY, 0) == 0
    assert db.metadata_stats().horizon == 0
    with pytest.raises(ValueError):
        positions.apply_horizon(db, KEY, -1)


def test_metadata_stats_count_rows_tombstones_and_collected(tmp_path: Path) -> None:
    db = _synced(tmp_path / "d.db")
    s = db.metadata_stats()
    assert (s.rows, s.tombstones, s.collected, s.horizon, s.horizon_seen_at) == (
        0,
        0,
        0,
        None,
        None,
    )
    db.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [(f"k{i}", "x" * 20) for i in range(100)]
    )
    db.conn.execute("DELETE FROM todos WHERE id < 'k5'")  # k0..k4x: 56 rows
    deleted = db.conn.execute('SELECT count(*) FROM "todos__crsync" WHERE cl = 2').fetchone()[0]
    positions.record(db, KEY, "push", "E", db.db_version)
    _pull(db, 2)
    positions.apply_horizon(db, KEY, 1)
    before = db.metadata_stats()
    assert (before.rows, before.tombstones, before.collected) == (100 - deleted, deleted, 0)
    assert before.metadata_bytes > 0 and before.bytes_per_row is not None
    assert before.horizon == 1 and before.horizon_seen_at is not None
    _pull(db, 3)
    assert positions.apply_horizon(db, KEY, 2) == deleted
    after = db.metadata_stats()
    assert (after.rows, after.tombstones, after.collected) == (100 - deleted, 0, deleted)
    assert isinstance(after, crsync.MetadataStats)


# ---------------------------------------------------------------------------- format 2


def test_a_format_1_database_is_migrated_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURES / "format1.db", path)
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT value FROM crsync_meta WHERE key = 'format_version'").fetchone() == (
        1,
    )
    before = {
        t: raw.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in ("todos", "notes")
    }
    meta_before = {t: _resolved(raw, t) for t in ("todos", "notes")}
    raw.close()
    # Read-only, a format-1 file is read as it is.
    ro = crsync.connect(f"file:{path}?mode=ro")
    assert ro.read_only and len(ro.changes()) > 0
    ro.close()
    db = crsync.connect(path)
    c = db.conn
    assert c.execute("SELECT value FROM crsync_meta WHERE key = 'format_version'").fetchone() == (
        FORMAT_VERSION,
    )
    for t in ("todos", "notes"):
        assert c.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() == before[t]
        assert _resolved(c, t) == meta_before[t]
        sql = c.execute(
            "SELECT sql FROM sqlite_schema WHERE name = ?", (f"{t}__crsync_dbv",)
        ).fetchone()[0]
        assert sql.endswith("WHERE dbv IS NOT NULL")
        notnull = {r[1]: r[3] for r in c.execute(f'PRAGMA table_info("{t}__crsync")')}
        assert notnull["dbv"] == 0
    assert positions.load(db, KEY)[0] == "E1"
    # The triggers still capture, deletes and re-inserts included, and compaction works.
    v = db.db_version
    c.execute("UPDATE todos SET title = 'new' WHERE id = 'k7'")
    c.execute("DELETE FROM todos WHERE id = 'k8'")
    c.execute("INSERT INTO todos (id, title) VALUES ('k4', 'back')")  # deleted in format 1
    got = {(crsync.unpack_pk(x.pk)[0], x.cid, x.cl) for x in db.changes(since=v)}
    assert ("k7", "title", 1) in got and ("k8", SENTINEL, 2) in got and ("k4", SENTINEL, 3) in got
    positions.record(db, KEY, "push", "E1", db.db_version)
    positions.merge_and_record(db, [], KEY, "E1", 1)
    positions.apply_horizon(db, KEY, 0)
    positions.merge_and_record(db, [], KEY, "E1", 2)
    assert positions.apply_horizon(db, KEY, 1) > 0
    db.close()
    # Opened again: nothing left to migrate.
    again = crsync.connect(path)
    assert again.metadata_stats().collected > 0
    again.close()


# ---------------------------------------------------------------------------- staging


def test_staged_parts_merge_with_the_last_part_as_one_unit(tmp_path: Path) -> None:
    src = _db()
    src.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [(f"k{i}", "x") for i in range(6)]
    )
    changes = src.changes()
    db = _synced(tmp_path / "d.db")
    assert positions.staged(db, KEY) is None
    positions.stage(db, KEY, "E", p.Changes(0, 7, changes[:4], True))
    positions.stage(db, KEY, "E", p.Changes(0, 7, changes[4:8], True))
    got = positions.staged(db, KEY)
    assert got is not None
    assert (got.epoch, got.base, got.upto, got.cells) == ("E", 0, 7, 8)
    assert got.last == (changes[7].table, changes[7].pk, changes[7].cid)
    # Nothing is merged while parts are staged.
    assert db.conn.execute("SELECT count(*) FROM todos").fetchone() == (0,)
    positions.merge_and_record(db, list(changes[8:]), KEY, "E", 7, staged=True)
    assert db.conn.execute("SELECT count(*) FROM todos").fetchone() == (6,)
    assert positions.staged(db, KEY) is None
    assert positions.load(db, KEY) == ("E", 0, 7)


def test_a_part_of_another_unit_or_an_epoch_change_drops_the_staged_unit(tmp_path: Path) -> None:
    src = _db()
    src.conn.execute("INSERT INTO todos (id, title) VALUES ('k', 'x')")
    changes = src.changes()
    db = _synced(tmp_path / "d.db")
    positions.stage(db, KEY, "E", p.Changes(0, 7, changes, True))
    positions.stage(db, KEY, "E", p.Changes(0, 8, changes, True))
    got = positions.staged(db, KEY)
    assert got is not None and (got.upto, got.cells) == (8, len(changes))
    positions.drop_staged(db, KEY)
    assert positions.staged(db, KEY) is None
    positions.stage(db, KEY, "E", p.Changes(0, 8, changes, True))
    positions.reset(db, KEY, "F")
    assert positions.staged(db, KEY) is None


def test_a_tombstone_merged_after_the_mark_waits_for_a_horizon_past_it(tmp_path: Path) -> None:
    # Merges do not seal the open version: two merges in a row can stamp the same local
    # version. The mark seals first, so a delete merged after it (from a relay version above
    # the mark) is not compacted by a horizon that covers only the mark.
    src = _db()
    src.conn.executemany("INSERT INTO todos (id, title) VALUES (?, 'x')", [("a",), ("b",)])
    first = src.changes()
    src.conn.execute("DELETE FROM todos WHERE id = 'a'")
    del_a = src.changes(since=max(c.db_version for c in first))
    v = src.db_version
    src.conn.execute("DELETE FROM todos WHERE id = 'b'")
    del_b = src.changes(since=v)
    db = _synced(tmp_path / "d.db")
    _pull(db, 1, first)
    _pull(db, 2, del_a)
    assert positions.apply_horizon(db, KEY, 0) == 0  # mark: relay version 2
    _pull(db, 3, del_b)  # relay version 3, above every horizon so far
    assert positions.apply_horizon(db, KEY, 2) == 1
    assert _meta(db, "a") == (2, None, None, None, None)
    assert _meta(db, "b")[4] is not None  # b's delete keeps its clock
    assert positions.apply_horizon(db, KEY, 3) == 1  # the mark moved to 3
    assert _meta(db, "b") == (2, None, None, None, None)


def test_the_feed_reads_through_the_partial_dbv_index() -> None:
    # SQLite uses a partial index only when the query implies its WHERE: ``dbv > ?`` and
    # ``dbv = ?`` imply ``dbv IS NOT NULL``. A full scan here would make every feed read
    # and every live-query probe read the whole metadata table.
    db = _db()
    db.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, 'x')", [(str(i),) for i in range(50)]
    )
    for sql in (
        'SELECT 1 FROM "todos__crsync" WHERE dbv > ? AND dbv <= ? LIMIT 1',
        'SELECT 1 FROM "todos__crsync" WHERE dbv = ? LIMIT 1',
    ):
        plan = " ".join(
            r[3] for r in db.conn.execute("EXPLAIN QUERY PLAN " + sql, (1, 2)[: sql.count("?")])
        )
        assert "INDEX todos__crsync_dbv" in plan, plan
