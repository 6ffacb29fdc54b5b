"""What only the PostgreSQL backend has: moving stores to and from SQLite store files (the
core of ``migrate-stores`` and of backups), the layout, the optional dependency, the quota
figure kept by every write."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from crsync_relay.store import RelayStore

import crsync
from crsync.protocol import TableSchema

from .helpers import SCHEMA, A, B, cell, feed, sentinel, state

VALUES = [
    None, 0, 1, -1, (1 << 63) - 1, -(1 << 63), 0.0, -0.0, 1.5, -2.25, float("inf"),
    float("-inf"), 5e-324, 1.7976931348623157e308, "", "plain", "a\x00b\x00", "é\u2603\U0001f600",
    "x" * 10_000, b"", b"\x00", b"\x00\xff\x80", bytes(range(256)) * 40,
]  # fmt: skip


def _same(a: object, b: object) -> bool:
    return type(a) is type(b) and repr(a) == repr(b)


def _everything(s: Any) -> dict[str, Any]:
    """A store's whole observable state."""
    return {
        "epoch": s.epoch,
        "head": s.head,
        "feed": feed(s),
        "schema": s.schema(),
        "peers": {site: s.peer(site) for site in (A, B, bytes(16))},
        "reactor": s.reactor_state(),
    }


def _populated_sqlite(path: Path) -> RelayStore:
    s = RelayStore(path)
    assert s.check_schema(dict(SCHEMA)) is None
    assert s.check_schema({"odd\x00name": TableSchema(("k",), ("v\x00col",))}) is None
    s.merge_push(A, 3, [cell(i, "data", v, 1 + i % 4, seq=i) for i, v in enumerate(VALUES)])
    s.merge_push(B, 2, [sentinel(3, 2, site=B), cell((1, "x"), "body", "n", table="notes")])
    s.merge_push(B, 5, [cell(1, "v\x00col", "nul names", table="odd\x00name", site=B)])
    s.record_received(A, 2)
    assert s.bind_site(A, b"a's key") is None
    site, _ = s.reactor_state()
    s.merge_push(site, 1, [cell("r", "title", "reactor", site=site)], {"reactor_cursor": 3})
    s.set_aside_reactor_batch(1, 2, "poison")
    return s


def test_import_keeps_every_value_version_position_and_epoch(
    pg_database: Any, tmp_path: Path
) -> None:
    src = _populated_sqlite(tmp_path / "src.store.sqlite3")
    want = _everything(src)
    src.close()
    sid = f"imp-{uuid.uuid4().hex[:8]}"
    epoch = pg_database.import_store(sid, tmp_path / "src.store.sqlite3")
    assert epoch == want["epoch"]
    got = _everything(pg_database.open_store(sid, create=False))
    assert got == want
    for (_, a), (_, b) in zip(got["feed"], want["feed"], strict=True):
        assert all(_same(x[3], y[3]) for x, y in zip(a, b, strict=True))
    assert pg_database.open_store(sid).bind_site(A, b"another key") is not None
    # A device resumes where it was: same epoch, its cursor still names the same versions.
    s = pg_database.open_store(sid)
    assert s.changes_since(2, None) == RelayStore(tmp_path / "src.store.sqlite3").changes_since(
        2, None
    )


def test_export_then_import_round_trips_exactly(pg_database: Any, tmp_path: Path) -> None:
    _populated_sqlite(tmp_path / "a.store.sqlite3").close()
    sid = f"rt-{uuid.uuid4().hex[:8]}"
    pg_database.import_store(sid, tmp_path / "a.store.sqlite3")
    pg = pg_database.open_store(sid)
    pg.merge_push(A, 9, [cell("after", "title", "written in PostgreSQL")])
    head, check = pg_database.export_store(sid, tmp_path / "b.store.sqlite3")
    assert (head, check) == (pg.head, "ok")
    exported = RelayStore(tmp_path / "b.store.sqlite3", create=False)
    assert _everything(exported) == _everything(pg)
    assert exported.stats()["cells"] == pg.stats()["cells"]
    raw = exported.conn.execute("SELECT key, value FROM relay_meta").fetchall()
    assert {k for k, _ in raw} >= {"epoch", "head", "created", "relay_site", "reactor_cursor"}
    assert exported.conn.execute("SELECT count(*) FROM reactor_set_aside").fetchone() == (1,)
    # And back again, under another id: still the same store.
    again = f"rt2-{uuid.uuid4().hex[:8]}"
    pg_database.import_store(again, tmp_path / "b.store.sqlite3")
    assert _everything(pg_database.open_store(again)) == _everything(pg)
    assert pg_database.open_store(again).set_aside_batches()[0][:3] == (1, 2, "poison")


def test_import_refuses_an_existing_store_unless_replacing(
    pg_database: Any, tmp_path: Path
) -> None:
    _populated_sqlite(tmp_path / "a.store.sqlite3").close()
    sid = f"ex-{uuid.uuid4().hex[:8]}"
    s = pg_database.open_store(sid)
    s.merge_push(A, 1, [cell("k", "title", "mine")])
    with pytest.raises(crsync.CrsyncError, match="exists"):
        pg_database.import_store(sid, tmp_path / "a.store.sqlite3")
    assert s.head == 1 and [c[3] for c in state(s)] == ["mine"]  # untouched
    epoch = pg_database.import_store(sid, tmp_path / "a.store.sqlite3", replace=True, epoch="e2")
    assert epoch == "e2" == pg_database.store_epoch(sid)
    assert "mine" not in [c[3] for c in state(s)]


def test_import_refuses_a_file_that_is_not_a_store(pg_database: Any, tmp_path: Path) -> None:
    bad = tmp_path / "bad.store.sqlite3"
    bad.write_bytes(b"not a database" * 100)
    sid = f"bad-{uuid.uuid4().hex[:8]}"
    with pytest.raises(crsync.CrsyncError, match="not a relay store"):
        pg_database.import_store(sid, bad)
    assert not pg_database.has_store(sid)


def test_export_refuses_a_missing_store_or_a_used_file(pg_database: Any, tmp_path: Path) -> None:
    with pytest.raises(crsync.CrsyncError, match="no store"):
        pg_database.export_store("never-made", tmp_path / "x.store.sqlite3")
    assert not (tmp_path / "x.store.sqlite3").exists()
    used = tmp_path / "used.store.sqlite3"
    used.write_bytes(b"data")
    pg_database.open_store("exported-once")
    with pytest.raises(crsync.CrsyncError, match="not empty"):
        pg_database.export_store("exported-once", used)


def test_store_level_operations(pg_database: Any) -> None:
    sid = f"ops-{uuid.uuid4().hex[:8]}"
    s = pg_database.open_store(sid)
    assert sid in pg_database.store_ids() and pg_database.has_store(sid)
    s.merge_push(A, 1, [cell("k", "title", "x")])
    assert pg_database.reactor_behind(sid)  # no reactor cursor: 0, behind the head
    s.save_reactor_cursor(1)
    assert not pg_database.reactor_behind(sid)
    pg_database.check_store(sid)
    pg_database.set_epoch(sid, "fresh")
    assert pg_database.store_epoch(sid) == "fresh"
    pg_database.drop_store(sid)
    assert not pg_database.has_store(sid) and sid not in pg_database.store_ids()
    with pytest.raises(crsync.CrsyncError, match="no store"):
        pg_database.drop_store(sid)
    with pytest.raises(crsync.CrsyncError):
        _ = s.head  # an instance of a dropped store says so


def test_reactor_behind_matches_the_sqlite_store(pg_database: Any, tmp_path: Path) -> None:
    path = tmp_path / "r.store.sqlite3"
    s = RelayStore(path)
    s.merge_push(A, 1, [cell("k", "title", "x")])
    s.close()
    sid = f"rb-{uuid.uuid4().hex[:8]}"
    pg_database.import_store(sid, path)
    assert pg_database.reactor_behind(sid) == RelayStore.reactor_behind(path)


def test_the_quota_figure_follows_every_write(pg_database: Any) -> None:
    """``data_bytes`` is a counter kept by merges and repairs: it must equal the figure
    recomputed from the cells after any sequence of writes."""
    from crsync_relay.pg_store import CELL_OVERHEAD

    s = pg_database.open_store(f"q-{uuid.uuid4().hex[:8]}")

    def recomputed() -> int:
        with pg_database.pool.connection() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(%s + octet_length(tbl) + octet_length(pk) + "
                "octet_length(cid) + coalesce(octet_length(data), 0)), 0) "
                "FROM crsync_relay.cells WHERE store_id = %s",
                (CELL_OVERHEAD, s.store_id),
            ).fetchone()
        return int(row[0])

    assert s.check_schema(dict(SCHEMA)) is None
    s.merge_push(A, 1, [cell(str(i), "title", "x" * i) for i in range(20)])
    assert s.data_bytes() == recomputed() > 0
    s.merge_push(B, 1, [cell(str(i), "title", "y", 2, site=B) for i in range(10)])
    s.merge_push(B, 2, [sentinel(str(i), 2, site=B) for i in range(5, 15)])
    assert s.data_bytes() == recomputed()
    from crsync import pack_pk

    s.remove_cells("todos", pack_pk(["1"]), "title")
    s.remove_cells("todos", pack_pk(["18"]), None)
    assert s.data_bytes() == recomputed()
    s.merge_push(A, 2, [cell((1, "b"), "body", "z", table="notes")])
    s.forget_table("todos")
    assert s.data_bytes() == recomputed() > 0


def test_the_layout_is_created_once_and_a_newer_one_refused(pg_server: Any) -> None:
    from crsync_relay.pg_store import PgDatabase, PgStoreError

    conninfo = pg_server.create_database(f"layout_{uuid.uuid4().hex[:8]}")
    with pytest.raises(PgStoreError, match="no relay stores"):
        PgDatabase(conninfo, create=False)
    first = PgDatabase(conninfo, max_size=2)
    first.open_store("kept").merge_push(A, 1, [cell("k", "title", "x")])
    second = PgDatabase(conninfo, max_size=2)  # a second node: the layout is there already
    assert second.open_store("kept").head == 1
    with first.pool.connection() as conn:
        conn.execute("UPDATE crsync_relay.layout SET version = 99")
    with pytest.raises(PgStoreError, match="newer crsync"):
        PgDatabase(conninfo, max_size=1)
    first.close()
    second.close()


def test_the_base_install_never_imports_psycopg() -> None:
    code = (
        "import sys\n"
        "import crsync_relay.server, crsync_relay.cli, crsync_relay.hub, crsync_relay.store_api\n"
        "assert 'psycopg' not in sys.modules, 'psycopg imported'\n"
        "sys.modules['psycopg'] = None  # as if the extra were not installed\n"
        "from crsync_relay.pg_store import PgDatabase, PgStoreError\n"
        "try:\n"
        "    PgDatabase('host=127.0.0.1')\n"
        "except PgStoreError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'crsync[postgres]'" in out.stdout


def test_text_that_is_not_utf8_is_refused_not_stored(pg_database: Any) -> None:
    s = pg_database.open_store(f"u-{uuid.uuid4().hex[:8]}")
    with pytest.raises(crsync.InvalidChangeError, match="UTF-8"):
        s.merge_push(A, 1, [cell("ok", "title", "x"), cell("k", "title", "\udc80")])
    assert s.head == 0 and state(s) == []


@pytest.mark.slow
@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails-in-ci"])
def test_without_postgresql_the_suite_skips_with_the_reason_unless_required(
    required: bool,
) -> None:
    env = {**os.environ, "CRSYNC_PG_BINDIR": "/nonexistent/pg/bin"}
    env.pop("CRSYNC_REQUIRE_PG", None)
    if required:
        env["CRSYNC_REQUIRE_PG"] = "1"
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         "tests/store/test_merge.py", "-k", "higher_col_version"],
        cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if required:
        assert out.returncode != 0 and "1 passed" in out.stdout and "1 error" in out.stdout
        assert "CRSYNC_REQUIRE_PG=1 but" in out.stdout
    else:
        assert out.returncode == 0 and "1 passed" in out.stdout and "1 skipped" in out.stdout
        assert "holds no initdb and postgres" in out.stdout


@pytest.mark.slow
def test_stores_recover_by_themselves_after_a_postgresql_restart(pg_server: Any) -> None:
    """Every pooled connection is cut by the restart: the next calls still succeed (the lost
    connection is noticed, the pool checked, the call run again on a live one)."""
    from crsync_relay.pg_store import PgDatabase

    from .pg_server import PrivatePostgres

    server = PrivatePostgres()  # a server of its own: the session's stays up
    db = None
    try:
        server.start()
        db = PgDatabase(server.create_database("restart"), min_size=3, max_size=3)
        s = db.open_store("r")
        s.merge_push(A, 1, [cell("k", "title", "before")])
        port = server.port
        server.stop()
        server.start()
        assert server.port == port
        assert s.head == 1
        assert s.merge_push(A, 2, [cell("k", "title", "after", 2)]) == (2, 1)
        assert [c.val for c in s.changes_since(0, None)[0]] == ["after"]
        assert s.peer(A).pushed_upto == 2
    finally:
        if db is not None:
            db.close()
        server.cleanup()


def test_the_store_index_counts_the_stores_each_subject_created(pg_database: Any) -> None:
    from crsync_relay.pg_store import PgStoreIndex

    index, other_node = PgStoreIndex(pg_database), PgStoreIndex(pg_database)
    subject = f"alice-{uuid.uuid4().hex[:8]}"
    assert index.created_by(subject) == 0
    index.add(f"{subject}-1", subject)
    other_node.add(f"{subject}-2", subject)
    other_node.add(f"{subject}-2", "mallory")  # the first creator stays
    assert index.created_by(subject) == other_node.created_by(subject) == 2
    assert index.created_by("mallory") == 0


def test_a_merge_notifies_its_new_head_at_commit_only(pg_server: Any, pg_database: Any) -> None:
    """With ``notify_channel``, a node listening hears ``<store> <head>`` for each committed
    relay version, in version order, and nothing for a push refused or making no version."""
    import psycopg
    from crsync_relay.pg_store import HEADS_CHANNEL, PgDatabase, parse_head_notification

    conninfo = pg_server.conninfo("crsync_store_tests")
    db = PgDatabase(conninfo, max_size=2, notify_channel=HEADS_CHANNEL)
    try:
        with psycopg.connect(conninfo, autocommit=True) as listener:
            listener.execute(f"LISTEN {HEADS_CHANNEL}")
            s = db.open_store(f"n-{uuid.uuid4().hex[:8]}")
            s.merge_push(A, 1, [cell("k", "title", "x")])
            s.merge_push(A, 2, [cell("k", "title", "x")])  # loses: no version, no notice
            with pytest.raises(crsync.InvalidChangeError):
                s.merge_push(A, 3, [cell("k", "title", "y", 2), cell(1, "c", 1, table="t" * 3000)])
            s.merge_push(B, 1, [cell("j", "title", "z", site=B)])
            got = [
                parse_head_notification(n.payload)
                for n in listener.notifies(timeout=10, stop_after=2)
            ]
            assert got == [(s.store_id, 1), (s.store_id, 2)]
            assert not list(listener.notifies(timeout=0.2))  # nothing else was sent
    finally:
        db.close()


def test_an_unreachable_database_is_reported_at_once_with_the_reason(pg_server: Any) -> None:
    from crsync_relay.pg_store import PgDatabase, PgStoreError

    with pytest.raises(PgStoreError, match=r"cannot connect.*does not exist"):
        PgDatabase(pg_server.conninfo("no_such_database"), timeout=20)
    with pytest.raises(PgStoreError, match="password authentication failed"):
        PgDatabase(pg_server.conninfo().replace(pg_server.password, "wrong"), timeout=20)


def test_versions_stay_gap_free_when_the_server_defaults_to_another_isolation(
    pg_server: Any, pg_database: Any
) -> None:
    """A DBA's ``default_transaction_isolation`` does not change the store's transactions."""
    from crsync_relay.pg_store import PgDatabase

    conninfo = pg_server.conninfo("crsync_store_tests")
    strict = PgDatabase(
        conninfo + " options='-c default_transaction_isolation=serializable'", max_size=4
    )
    try:
        s = strict.open_store(f"iso-{uuid.uuid4().hex[:8]}")
        with strict.transaction() as conn:
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("read committed",)
        with strict.transaction(snapshot=True) as conn:
            assert conn.execute("SHOW transaction_isolation").fetchone() == ("repeatable read",)
            assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        s.merge_push(A, 1, [cell("k", "title", "x")])
        assert s.head == 1 and s.read_page(0, None).upto == 1
    finally:
        strict.close()


def test_a_failed_export_leaves_no_store_file(
    pg_database: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crsync_relay.pg_store import PgDatabase

    sid = f"fx-{uuid.uuid4().hex[:8]}"
    pg_database.open_store(sid).merge_push(A, 1, [cell("k", "title", "x")])

    def broken(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(PgDatabase, "_export_cells", staticmethod(broken))
    with pytest.raises(OSError, match="disk full"):
        pg_database.export_store(sid, tmp_path / "half.store.sqlite3")
    assert list(tmp_path.iterdir()) == []


def test_migrating_a_data_directory_keeps_every_store_and_its_creators(
    pg_database: Any, tmp_path: Path
) -> None:
    from crsync_relay.datadir import DataDir, DataDirLock
    from crsync_relay.pg_store import PgStoreIndex, migrate_data_dir

    data = tmp_path / "data"
    layout = DataDir(data)
    layout.create()
    tag = uuid.uuid4().hex[:8]
    want = {}
    for n in range(3):
        sid = f"mig-{tag}-{n}"
        s = RelayStore(layout.store_path(sid))
        s.merge_push(A, 5, [cell(str(i), "title", f"{sid} {i}") for i in range(n + 1)])
        s.record_received(A, 1)
        want[sid] = _everything(s)
        s.close()
    index = layout.store_index()
    index.add(f"mig-{tag}-0", f"alice-{tag}")
    index.close()

    lock = DataDirLock(data)
    assert lock.try_acquire()  # a relay serves the directory: refused
    with pytest.raises(crsync.CrsyncError, match="stop it before migrating"):
        migrate_data_dir(data, pg_database)
    lock.release()
    moved = migrate_data_dir(data, pg_database)
    assert [(sid, epoch) for sid, epoch, _ in moved] == [
        (sid, w["epoch"]) for sid, w in sorted(want.items())
    ]
    for sid, w in want.items():
        assert _everything(pg_database.open_store(sid, create=False)) == w
    assert PgStoreIndex(pg_database).created_by(f"alice-{tag}") == 1
    # Again: every store exists now, so nothing is touched unless replacing.
    pg_database.open_store(f"mig-{tag}-1").merge_push(B, 1, [cell("new", "title", "x")])
    with pytest.raises(crsync.CrsyncError, match="3 of the stores exist"):
        migrate_data_dir(data, pg_database)
    assert pg_database.open_store(f"mig-{tag}-1").head == 2
    migrate_data_dir(data, pg_database, replace=True)
    assert _everything(pg_database.open_store(f"mig-{tag}-1")) == want[f"mig-{tag}-1"]
