"""The relay's store file without sockets: merge, catch-up reads, epoch, schema, store ids."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest
from crsync_relay.datadir import BadStoreId, check_store_id
from crsync_relay.hub import Hub
from crsync_relay.store import RelayStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store.helpers import read_version_1_in_parts

import crsync
from crsync import Change, InvalidChangeError, pack_pk
from crsync.protocol import TableSchema

from .helpers import open_db, snapshot

SCHEMA = {
    "todos": TableSchema(("id",), ("data", "done", "title")),
    "notes": TableSchema(("a", "b"), ("body",)),
}


def new_store(path: Path) -> RelayStore:
    s = RelayStore(path)
    assert s.check_schema(dict(SCHEMA)) is None
    return s


def relay_state(s: RelayStore) -> list[tuple[object, ...]]:
    return s.conn.execute(
        "SELECT tbl, pk, cid, val, col_version, site_id, cl, seq FROM relay_cells "
        "ORDER BY tbl, pk, cid"
    ).fetchall()


def pull_all(s: RelayStore, db: crsync.Database, max_cells: int = 5000) -> int:
    """Catch a database up from the store page by page, as a peer does; returns pages."""
    cursor, pages = 0, 0
    while True:
        changes, upto, complete = s.changes_since(cursor, None, max_cells)
        db.merge(changes)
        pages += 1
        assert upto >= cursor
        cursor = upto
        if complete:
            return pages


# ---------------------------------------------------------------------------- merge


def _random_devices(tmp_path: Path, seed: int, n: int = 3) -> list[crsync.Database]:
    """Devices that made random concurrent edits and partially synced with each other."""
    rnd = random.Random(seed)
    dbs = [open_db(tmp_path / f"dev{seed}-{i}.db") for i in range(n)]
    for _ in range(25):
        db = rnd.choice(dbs)
        k = str(rnd.randrange(6))
        op = rnd.randrange(6)
        if op == 0:
            db.conn.execute("DELETE FROM todos WHERE id = ?", (k,))
        elif op == 1:
            db.conn.execute(
                "INSERT OR REPLACE INTO todos (id, title) VALUES (?, ?)", (k, f"t{rnd.random()}")
            )
        elif op == 2:
            db.conn.execute("UPDATE todos SET done = done + 1 WHERE id = ?", (k,))
        elif op == 3:
            db.conn.execute(
                "INSERT OR REPLACE INTO notes VALUES (?, ?, ?)", (int(k), "x", rnd.random())
            )
        elif op == 4:
            db.conn.execute("DELETE FROM notes WHERE a = ?", (int(k),))
        else:
            other = rnd.choice(dbs)
            if other is not db:
                db.merge(other.changes())
    return dbs


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.integers(0, 10_000), st.integers(1, 40))
def test_merge_push_converges_with_database_merge(tmp_path: Path, seed: int, batch: int) -> None:
    dbs = _random_devices(tmp_path, seed)
    rnd = random.Random(seed)
    feeds = [(db.site_id, db.changes()) for db in dbs]
    # The reference: every device's feed merged into one Database.
    ref = open_db(tmp_path / f"ref{seed}-{batch}.db")
    for _, feed in feeds:
        ref.merge(feed)
    # The relay: the same feeds pushed in random order and random batch sizes.
    store = new_store(tmp_path / f"s{seed}-{batch}.store.sqlite3")
    rnd.shuffle(feeds)
    for site, feed in feeds:
        for i in range(0, len(feed), batch):
            store.merge_push(site, 1, feed[i : i + batch])
    # A fresh device catching up from the relay ends with the reference's data.
    fresh = open_db(tmp_path / f"fresh{seed}-{batch}.db")
    pull_all(store, fresh, max_cells=7)
    assert snapshot(fresh) == snapshot(ref)
    # And every original device, after pulling from the relay, has it too.
    for db in dbs:
        pull_all(store, db)
        assert snapshot(db) == snapshot(ref)


def test_merge_push_is_idempotent(tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    a.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)", [(str(i), f"t{i}") for i in range(20)]
    )
    a.conn.execute("DELETE FROM todos WHERE id = '3'")
    store = new_store(tmp_path / "s.store.sqlite3")
    changes = a.changes()
    head, wins = store.merge_push(a.site_id, 5, changes)
    assert head == 1 and wins > 0
    state = relay_state(store)
    for _ in range(3):
        assert store.merge_push(a.site_id, 5, changes) == (1, 0)
        assert store.merge_push(a.site_id, 5, changes[::-1]) == (1, 0)
    assert relay_state(store) == state
    assert store.head == 1


def test_store_keeps_only_the_latest_state_of_each_cell(tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    store = new_store(tmp_path / "s.store.sqlite3")
    since = 0
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'v0')")
    for i in range(1, 30):
        a.conn.execute("UPDATE todos SET title = ? WHERE id = '1'", (f"v{i}",))
        since, changes = a.changes_since(since)
        store.merge_push(a.site_id, since, changes)
    cells = store.conn.execute(
        "SELECT cid, val, col_version FROM relay_cells ORDER BY cid"
    ).fetchall()
    # one row per cell (a row created by a plain insert has no row-existence record)
    assert [c[0] for c in cells] == ["data", "done", "title"]
    assert ("title", "v29", 30) in cells
    a.conn.execute("DELETE FROM todos WHERE id = '1'")
    since, changes = a.changes_since(since)
    store.merge_push(a.site_id, since, changes)
    # a deleted row keeps only its row-existence record
    assert store.conn.execute("SELECT cid, cl FROM relay_cells").fetchall() == [("-1", 2)]


def test_merge_push_records_the_pushed_position(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.store.sqlite3")
    site = bytes(16)
    store.merge_push(site, 7, [])
    store.merge_push(site, 3, [])  # positions never go back
    assert store.peer(site).pushed_upto == 7
    store.record_received(site, 4)
    store.record_received(site, 2)
    assert store.peer(site).received_upto == 4
    assert store.head == 0  # an empty push makes no relay version


@pytest.mark.parametrize(
    "change",
    [
        Change("todos", b"\x07garbage", "title", 1, 1, 1, bytes(16), 1, 0),
        Change("todos", pack_pk([None]), "title", 1, 1, 1, bytes(16), 1, 0),
        Change("todos", pack_pk([]), "title", 1, 1, 1, bytes(16), 1, 0),
        Change("todos", pack_pk(["a", "b"]), "title", 1, 1, 1, bytes(16), 1, 0),
        Change("notes", pack_pk([1]), "body", 1, 1, 1, bytes(16), 1, 0),
        Change("t" * 3000, pack_pk([1]), "body", 1, 1, 1, bytes(16), 1, 0),
    ],
    ids=["garbage-pk", "null-pk", "empty-pk", "pk-too-long", "pk-too-short", "long-name"],
)
def test_merge_push_refuses_changes_devices_could_not_apply(tmp_path: Path, change: Change) -> None:
    store = new_store(tmp_path / "s.store.sqlite3")
    good = Change("todos", pack_pk(["ok"]), "title", "x", 1, 1, bytes(16), 1, 0)
    with pytest.raises(InvalidChangeError):
        store.merge_push(bytes(16), 1, [good, change])
    assert store.head == 0 and relay_state(store) == []  # nothing of the batch was stored
    assert not store.conn.in_transaction
    assert store.merge_push(bytes(16), 1, [good]) == (1, 1)


# ---------------------------------------------------------------------------- reads


def test_changes_since_pages_by_whole_versions_and_excludes_a_site(tmp_path: Path) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    store = new_store(tmp_path / "s.store.sqlite3")
    sizes = [3, 1, 8, 2, 2, 5]
    for n, db in zip(sizes, [a, b, a, b, a, b], strict=True):
        v0 = db.db_version
        db.conn.executemany(
            "INSERT OR REPLACE INTO notes VALUES (?, ?, 'x')",
            [(i, db.site_id.hex()) for i in range(n)],
        )
        store.merge_push(db.site_id, db.db_version, db.changes(v0))
    assert store.head == len(sizes)
    everything, upto, complete = store.changes_since(0, None, 10**6)
    assert complete and upto == store.head
    per_version: dict[int, int] = {}
    for c in everything:
        per_version[c.db_version] = per_version.get(c.db_version, 0) + 1
    cursor, seen = 0, []
    while True:
        page, upto, complete = store.changes_since(cursor, None, max_cells=5)
        versions = {c.db_version for c in page}
        assert all(cursor < v <= upto for v in versions)
        for v in versions:  # every version in a page is complete
            assert sum(1 for c in page if c.db_version == v) == per_version[v]
        assert len(page) <= 5 or len(versions) == 1  # only one big version exceeds the limit
        seen += page
        cursor = upto
        if complete:
            break
    assert sorted(seen, key=repr) == sorted(everything, key=repr)
    only_b, upto, complete = store.changes_since(0, a.site_id, 10**6)
    assert complete and upto == store.head
    assert only_b and all(c.site_id == b.site_id for c in only_b)
    assert len(only_b) == sum(1 for c in everything if c.site_id == b.site_id)
    assert store.changes_since(store.head, None) == ([], store.head, True)


# ---------------------------------------------------------------------------- epoch


def test_epoch_is_stable_across_reopen_and_new_for_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "s.store.sqlite3"
    s1 = RelayStore(path)
    epoch = s1.epoch
    s1.merge_push(bytes(16), 1, [Change("t", pack_pk([1]), "c", 1, 1, 1, bytes(16), 1, 0)])
    s1.close()
    s2 = RelayStore(path)
    assert s2.epoch == epoch and s2.head == 1
    s2.close()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    s3 = RelayStore(path)
    assert s3.epoch != epoch and s3.head == 0
    assert RelayStore(tmp_path / "other.store.sqlite3").epoch not in (epoch, s3.epoch)


def test_open_without_create_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(crsync.CrsyncError, match="no store"):
        RelayStore(tmp_path / "missing.store.sqlite3", create=False)
    assert not (tmp_path / "missing.store.sqlite3").exists()


# ---------------------------------------------------------------------------- schema


def test_check_schema_pk_mismatch_names_table_and_difference(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.store.sqlite3")
    problem = store.check_schema({"todos": TableSchema(("id", "owner"), ("title",))})
    assert problem is not None
    assert "'todos'" in problem and "['id']" in problem and "['id', 'owner']" in problem
    assert not store.conn.in_transaction
    # nothing of a refused schema is recorded, not even its new tables
    problem = store.check_schema(
        {"new": TableSchema(("k",), ()), "notes": TableSchema(("b", "a"), ("body",))}
    )
    assert problem is not None and "'notes'" in problem
    assert "new" not in store.schema()


def test_check_schema_accepts_and_records_additive_columns(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.store.sqlite3")
    assert store.check_schema({"todos": TableSchema(("id",), ("title", "extra"))}) is None
    assert store.check_schema({"todos": TableSchema(("id",), ("title",))}) is None
    assert store.check_schema({"other": TableSchema(("k",), ("v",))}) is None
    schema = store.schema()
    assert set(schema["todos"].columns) == {"data", "done", "title", "extra"}
    assert schema["other"] == TableSchema(("k",), ("v",))


def test_check_schema_refuses_an_overlong_table_name_and_stays_usable(tmp_path: Path) -> None:
    store = new_store(tmp_path / "s.store.sqlite3")
    assert store.check_schema({"t" * 5000: TableSchema(("k",), ())}) is not None
    assert not store.conn.in_transaction
    assert store.check_schema({"ok": TableSchema(("k",), ())}) is None
    store.merge_push(bytes(16), 1, [])


# ---------------------------------------------------------------------------- store ids


@pytest.mark.parametrize(
    "store",
    [
        "../x",
        "/etc/x",
        "a/b",
        "a\\b",
        "",
        ".",
        "..",
        "a..b",
        ".hidden",
        "-x",
        "_x",
        "x" * 129,
        "café",
        "\uff58",
        "a b",
        "a\n",
        "a\x00",
        "a\nb",
        "\n",
        "a:b",
        "a*",
        "con?",
    ],
    ids=repr,
)
def test_check_store_id_refuses_unsafe_ids(store: str, tmp_path: Path) -> None:
    with pytest.raises(BadStoreId):
        check_store_id(store)
    with pytest.raises(BadStoreId):
        Hub(tmp_path).path_for(store)


@pytest.mark.parametrize("store", ["a", "A1", "x" * 128, "alice.notes-v2_x", "0"])
def test_check_store_id_accepts_plain_ids(store: str, tmp_path: Path) -> None:
    assert check_store_id(store) == store
    path = Hub(tmp_path).path_for(store)
    assert path.parent == tmp_path and path.name == store + ".store.sqlite3"


def test_store_file_is_plain_sqlite(tmp_path: Path) -> None:
    new_store(tmp_path / "s.store.sqlite3").close()
    conn = sqlite3.connect(tmp_path / "s.store.sqlite3")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_version_larger_than_the_read_budget_is_read_in_parts_covering_every_cell(
    tmp_path: Path,
) -> None:
    """Security review M2: a catch-up read held a whole version in memory, however large."""
    a = open_db(tmp_path / "a.db")
    store = new_store(tmp_path / "s.store.sqlite3")
    v0 = a.db_version
    a.conn.executemany(
        "INSERT INTO notes VALUES (?, 'x', ?)", [(i, "y" * 1000) for i in range(300)]
    )
    store.merge_push(a.site_id, a.db_version, a.changes(v0))
    assert store.head == 1
    whole = store.changes_since(0, None, 10**6)[0]
    seen, page, parts = read_version_1_in_parts(store)
    assert page.complete and page.upto == 1
    assert parts > 5
    assert sorted(c.as_tuple() for c in seen) == sorted(c.as_tuple() for c in whole)
