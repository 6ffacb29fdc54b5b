"""Schema changes made by common tools outside db.migrate() never silently stop sync.

Alembic's batch mode, sqlite-utils' transform() and SQLite's documented 12-step ALTER rebuild a
table (create, copy, drop, rename): SQLite drops the capture triggers with the old table. crsync
notices at the next read, merge or seal and re-adopts the table without losing the writes made
in between, or stops with an error naming the table and the fix.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from core_helpers import SITE_A, SITE_B, SITE_C, open_db, rows
from hypothesis import given, settings
from hypothesis import strategies as st

import crsync
from crsync import SchemaError, unpack_pk
from crsync.change import SENTINEL

TODOS = (
    "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER NOT NULL DEFAULT 0)"
)


def plain(path: Path, legacy: bool) -> sqlite3.Connection:
    """A connection of another program (no crsync functions, no TEMP view)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")
    return conn


# ---------------------------------------------------------------- the tools


def alembic_batch(db: crsync.Database, path: Path, legacy: bool) -> None:
    """A real Alembic batch migration (recreate, as for any change SQLite cannot ALTER)."""
    import sqlalchemy as sa
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")
            op = Operations(MigrationContext.configure(conn))
            with op.batch_alter_table("todos", recreate="always") as batch:
                batch.add_column(sa.Column("due", sa.Text(), nullable=True))
    finally:
        engine.dispose()


def sqlite_utils_transform(db: crsync.Database, path: Path, legacy: bool) -> None:
    """A real sqlite-utils transform(), run on crsync's own connection."""
    import sqlite_utils

    db.conn.execute(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")
    sqlite_utils.Database(db.conn)["todos"].transform(defaults={"title": "untitled"})
    db.conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")


def twelve_step(conn: sqlite3.Connection, *, own_transaction: bool = True) -> None:
    """https://sqlite.org/lang_altertable.html#otheralter, steps 4 to 10."""
    if own_transaction:
        conn.execute("BEGIN")
    conn.execute(
        "CREATE TABLE new_todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, "
        "done INTEGER NOT NULL DEFAULT 0, due TEXT)"
    )
    conn.execute("INSERT INTO new_todos (id, title, done) SELECT id, title, done FROM todos")
    conn.execute("DROP TABLE todos")
    conn.execute("ALTER TABLE new_todos RENAME TO todos")
    conn.execute("PRAGMA foreign_key_check")
    if own_transaction:
        conn.execute("COMMIT")


def twelve_step_other_program(db: crsync.Database, path: Path, legacy: bool) -> None:
    twelve_step(plain(path, legacy))


def twelve_step_crsync_connection(db: crsync.Database, path: Path, legacy: bool) -> None:
    db.conn.execute(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")
    twelve_step(db.conn)


TOOLS: dict[str, Callable[[crsync.Database, Path, bool], None]] = {
    "alembic-batch": alembic_batch,
    "sqlite-utils-transform": sqlite_utils_transform,
    "12-step": twelve_step_other_program,
    "12-step-on-crsync-connection": twelve_step_crsync_connection,
}


def two_devices(tmp_path: Path) -> tuple[crsync.Database, crsync.Database]:
    a = open_db(tmp_path / "a.db", site=SITE_A)
    b = open_db(tmp_path / "b.db", site=SITE_B)
    for db in (a, b):
        db.conn.execute(TODOS)
        db.track("todos")
    return a, b


def live_keys(db: crsync.Database) -> set[str]:
    """Keys the change feed presents as existing rows (odd causal length)."""
    cl: dict[str, int] = {}
    for c in db.changes():
        if c.table == "todos":
            k = str(unpack_pk(c.pk)[0])
            cl[k] = max(cl.get(k, 0), c.cl)
    return {k for k, v in cl.items() if v % 2 == 1}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-on", "legacy-off"])
@pytest.mark.parametrize("tool", list(TOOLS))
def test_rebuild_by_a_common_tool_loses_no_edit(tmp_path: Path, tool: str, legacy: bool) -> None:
    a, b = two_devices(tmp_path)
    a.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)",
        [("r1", "one"), ("r2", "two"), ("r3", "three"), ("r5", "five")],
    )
    a.conn.execute("DELETE FROM todos WHERE id = 'r3'")
    b.merge(a.changes())
    since = a.db_version

    TOOLS[tool](a, tmp_path / "a.db", legacy)

    # The uncaptured window: another program writes before crsync looks again.
    other = plain(tmp_path / "a.db", legacy)
    other.execute("UPDATE todos SET title = 'one, edited', due = 'monday' WHERE id = 'r1'")
    other.execute("DELETE FROM todos WHERE id = 'r2'")
    other.execute("INSERT INTO todos (id, title) VALUES ('r3', 'three again')")
    other.execute("INSERT INTO todos (id, title, done) VALUES ('r4', 'four', 1)")
    other.close()

    with b.migrate("todos") as conn:  # device B gets the same app update
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    changes = a.changes(since=since)  # detection and re-adoption happen here
    assert a.tracked_tables() == ["todos"]
    b.merge(changes)
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    assert {r[0][1] for r in rows(b.conn, "todos")} == {"r1", "r3", "r4", "r5"}
    assert live_keys(a) == {"r1", "r3", "r4", "r5"}

    # Capture works again, on every connection.
    since = a.db_version
    other = plain(tmp_path / "a.db", legacy)
    other.execute("UPDATE todos SET done = 1 WHERE id = 'r5'")
    other.execute("DELETE FROM todos WHERE id = 'r4'")
    other.close()
    b.merge(a.changes(since=since))
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    # ... and both directions converge
    b.conn.execute("UPDATE todos SET title = 'from b' WHERE id = 'r1'")
    a.merge(b.changes())
    b.merge(a.changes())
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    assert a.conn.execute("SELECT title FROM todos WHERE id = 'r1'").fetchone() == ("from b",)


def test_rebuild_is_detected_by_a_merge_before_it_writes(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    twelve_step(plain(tmp_path / "a.db", legacy=False))
    a.conn.execute("UPDATE todos SET title = 'uncaptured' WHERE id = 'r1'")
    b.conn.execute("INSERT INTO todos (id, title) VALUES ('b1', 'from b')")
    a.merge(b.changes())  # re-adopts inside the merge's transaction
    assert a.conn.execute("SELECT title FROM todos WHERE id = 'r1'").fetchone() == ("uncaptured",)
    with b.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    b.merge(a.changes())
    assert rows(b.conn, "todos") == rows(a.conn, "todos")


def test_changes_kept_aside_for_a_column_a_rebuild_adds_are_applied(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    with a.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    a.conn.execute("INSERT INTO todos (id, title, due) VALUES ('r1', 'one', 'monday')")
    b.merge(a.changes())
    assert b.pending_count() == 1  # B has no column "due" yet
    alembic_batch(b, tmp_path / "b.db", legacy=False)  # B's app update, made by Alembic
    b.merge([])  # nothing new: no merge
    assert b.pending_count() == 1
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r2', 'two')")
    b.merge(a.changes())  # re-adopts inside the merge, then applies what was kept aside
    assert b.pending_count() == 0
    assert rows(b.conn, "todos") == rows(a.conn, "todos")


def test_readopted_cells_are_local_writes_one_col_version_up(tmp_path: Path) -> None:
    """The documented cost: every live cell is re-sent once, as this device's write."""
    a, _ = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    a.conn.execute("UPDATE todos SET title = 'one!' WHERE id = 'r1'")
    before = {c.cid: c.col_version for c in a.changes()}
    v = a.db_version
    twelve_step(plain(tmp_path / "a.db", legacy=True))
    after = a.changes(since=v)
    assert {c.cid: c.col_version for c in after} == {
        "title": before["title"] + 1,
        "done": before["done"] + 1,
    }
    assert {c.site_id for c in after} == {SITE_A}
    assert len({c.db_version for c in after}) == 1
    assert len({c.seq for c in after}) == len(after)


def test_rebuild_inside_migrate_keeps_clocks(tmp_path: Path) -> None:
    a, _ = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    before = {(c.cid, c.col_version, c.db_version) for c in a.changes()}
    with a.migrate("todos") as conn:
        twelve_step(conn, own_transaction=False)
    after = {(c.cid, c.col_version, c.db_version) for c in a.changes()}
    assert after == before


def test_drop_table_is_an_error_naming_the_table_and_the_fix(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.conn.execute("INSERT INTO todos (id, title) VALUES ('b1', 'from b')")
    a.conn.execute("DROP TABLE todos")  # not refused: nothing of crsync's references it
    for call in (a.changes, lambda: a.merge(b.changes()), a.tracked_tables):
        with pytest.raises(SchemaError, match=r"'todos'.*no longer exists.*db.untrack\('todos'\)"):
            call()
    a.untrack("todos")
    assert a.tracked_tables() == []
    assert a.changes() == []


def test_dropped_table_created_again_is_readopted(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    a.conn.execute("DROP TABLE todos")
    with pytest.raises(SchemaError):
        a.changes()
    a.conn.execute(TODOS)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r2', 'two')")
    b.merge(a.changes())
    assert (
        rows(b.conn, "todos")
        == rows(a.conn, "todos")
        == [(("str", "r2"), ("str", "two"), ("int", 0))]
    )


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-on", "legacy-off"])
def test_renamed_table_is_an_error_naming_the_new_name(tmp_path: Path, legacy: bool) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    since = a.db_version
    other = plain(tmp_path / "a.db", legacy)
    other.execute("ALTER TABLE todos RENAME TO tasks")
    other.execute("UPDATE tasks SET title = 'renamed' WHERE id = 'r1'")
    with pytest.raises(SchemaError, match=r"'todos'.*renamed to 'tasks'.*RENAME TO \"todos\""):
        a.changes(since=since)
    with pytest.raises(SchemaError, match="renamed to 'tasks'"):
        a.changes(since=since)  # stays an error until fixed
    other.execute("ALTER TABLE tasks RENAME TO todos")
    other.close()
    b.merge(a.changes(since=since))
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    assert b.conn.execute("SELECT title FROM todos").fetchone() == ("renamed",)


def test_rebuild_with_another_primary_key_is_an_error_naming_the_fix(tmp_path: Path) -> None:
    a, _ = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    other = plain(tmp_path / "a.db", legacy=False)
    other.execute("BEGIN")
    other.execute(
        "CREATE TABLE new_todos (id TEXT NOT NULL, title TEXT NOT NULL DEFAULT '', "
        "done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (id, title))"
    )
    other.execute("INSERT INTO new_todos SELECT id, title, done FROM todos")
    other.execute("DROP TABLE todos")
    other.execute("ALTER TABLE new_todos RENAME TO todos")
    other.execute("COMMIT")
    with pytest.raises(SchemaError, match=r"'todos'.*primary key changed.*untrack"):
        a.changes()


def test_rebuild_into_an_unreplicable_shape_is_an_error_until_undone(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    since = a.db_version
    twelve_step(plain(tmp_path / "a.db", legacy=False))
    a.conn.execute("CREATE UNIQUE INDEX todos_title ON todos (title)")
    a.conn.execute("UPDATE todos SET title = 'edited while broken'")
    with pytest.raises(SchemaError, match=r"'todos'.*cannot be re-adopted.*UNIQUE"):
        a.changes(since=since)
    a.conn.execute("DROP INDEX todos_title")
    with b.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    b.merge(a.changes(since=since))
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    assert b.conn.execute("SELECT title FROM todos").fetchone() == ("edited while broken",)


def test_track_again_after_a_rebuild_readopts_without_losing_edits(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    twelve_step(a.conn)
    a.conn.execute("UPDATE todos SET title = 'uncaptured' WHERE id = 'r1'")
    a.track("todos")  # as an app would after its own migration
    with b.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    b.merge(a.changes())
    assert rows(b.conn, "todos") == rows(a.conn, "todos")


def test_add_column_outside_migrate_is_adopted_at_the_next_read(tmp_path: Path) -> None:
    a, b = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    b.merge(a.changes())
    other = plain(tmp_path / "a.db", legacy=False)
    other.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    other.execute("UPDATE todos SET due = 'friday' WHERE id = 'r1'")
    other.close()
    with b.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    b.merge(a.changes())
    assert b.conn.execute("SELECT due FROM todos").fetchone() == ("friday",)
    a.conn.execute("UPDATE todos SET due = 'saturday'")  # the new column is captured now
    b.merge(a.changes())
    assert rows(b.conn, "todos") == rows(a.conn, "todos")


def test_schema_check_costs_one_pragma_when_nothing_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, _ = two_devices(tmp_path)
    a.changes()
    statements: list[str] = []
    a.conn.set_trace_callback(statements.append)

    def no_inspect(conn: sqlite3.Connection) -> list[object]:
        raise AssertionError("inspected although the schema did not change")

    monkeypatch.setattr(crsync.adoption, "inspect", no_inspect)
    a.conn.execute("INSERT INTO todos (id) VALUES ('x')")
    statements.clear()
    a._refresh()
    assert statements == ["PRAGMA schema_version"]


# ---------------------------------------------------------------- the crdt_changes view


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy-on", "legacy-off"])
@pytest.mark.parametrize("on", ["crsync-connection", "other-program"])
def test_crdt_changes_never_makes_a_migration_fail(tmp_path: Path, legacy: bool, on: str) -> None:
    a, _ = two_devices(tmp_path)
    a.conn.execute("CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT, extra TEXT)")
    a.track("notes")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    a.conn.execute("INSERT INTO notes VALUES ('n1', 'body', 'x')")
    conn = a.conn if on == "crsync-connection" else plain(tmp_path / "a.db", legacy)
    conn.execute(f"PRAGMA legacy_alter_table = {'ON' if legacy else 'OFF'}")
    conn.execute("CREATE TABLE scratch (id TEXT PRIMARY KEY NOT NULL, a TEXT, b TEXT)")
    for stmt in [
        "ALTER TABLE scratch RENAME COLUMN a TO a2",
        "ALTER TABLE scratch DROP COLUMN b",
        "ALTER TABLE scratch RENAME TO scratch2",
        "ALTER TABLE notes RENAME COLUMN body TO text",  # tracked: triggers follow the rename
        "DROP TABLE scratch2",
    ]:
        conn.execute(stmt)
    twelve_step(conn)
    conn.execute("DROP TABLE notes")
    a.untrack("notes")
    changes = a.changes()  # re-adopts todos
    feed = a.conn.execute(
        'SELECT "table", pk, cid, val, col_version, db_version, site_id, cl, seq FROM crdt_changes'
    ).fetchall()
    assert sorted(feed) == sorted(c.as_tuple() for c in changes)
    assert ("todos", crsync.pack_pk(("r1",)), "title", "one") in [f[:4] for f in feed]


def test_crdt_changes_is_not_kept_in_the_file(tmp_path: Path) -> None:
    a, _ = two_devices(tmp_path)
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'one')")
    assert a.conn.execute("SELECT count(*) FROM crdt_changes").fetchone() == (2,)
    other = plain(tmp_path / "a.db", legacy=False)
    assert other.execute("SELECT name FROM sqlite_schema WHERE type = 'view'").fetchall() == []
    # A view left by an older crsync (it broke ALTER TABLE) is removed when the file is opened.
    other.execute("CREATE VIEW crdt_changes AS SELECT id, title FROM todos")
    other.close()
    a.close()
    a = crsync.connect(tmp_path / "a.db")
    other = plain(tmp_path / "a.db", legacy=False)
    assert other.execute("SELECT name FROM sqlite_schema WHERE type = 'view'").fetchall() == []
    twelve_step(other)
    assert a.conn.execute("SELECT count(*) FROM crdt_changes").fetchone() == (2,)


def test_crdt_changes_exists_with_no_tracked_table() -> None:
    db = open_db()
    assert db.conn.execute("SELECT * FROM crdt_changes").fetchall() == []
    assert [d[0] for d in db.conn.execute("SELECT * FROM crdt_changes").description] == [
        "table",
        "pk",
        "cid",
        "val",
        "col_version",
        "db_version",
        "site_id",
        "cl",
        "seq",
    ]


# ---------------------------------------------------------------- cr-sqlite's schema tests


@pytest.mark.parametrize("how", ["migrate", "alter-then-track", "alter-then-read"])
def test_pk_only_table_can_gain_a_column_and_keeps_its_sentinel(how: str) -> None:
    a, b = open_db(site=SITE_A), open_db(site=SITE_B)
    for db in (a, b):
        db.conn.execute("CREATE TABLE tags (name TEXT PRIMARY KEY NOT NULL)")
        db.track("tags")
    a.conn.execute("INSERT INTO tags VALUES ('red'), ('blue')")
    b.merge(a.changes())
    sentinels = {c.pk: c for c in a.changes() if c.cid == SENTINEL}
    assert len(sentinels) == 2
    for db in (a, b):
        if how == "migrate":
            with db.migrate("tags") as conn:
                conn.execute("ALTER TABLE tags ADD COLUMN color TEXT")
        else:
            db.conn.execute("ALTER TABLE tags ADD COLUMN color TEXT")
            if how == "alter-then-track":
                db.track("tags")
    assert {c.pk: c for c in a.changes() if c.cid == SENTINEL} == sentinels
    a.conn.execute("UPDATE tags SET color = '#f00' WHERE name = 'red'")
    a.conn.execute("INSERT INTO tags VALUES ('green', '#0f0')")
    b.merge(a.changes())
    assert rows(a.conn, "tags") == rows(b.conn, "tags")
    assert len(rows(b.conn, "tags")) == 3


def test_rows_deleted_or_rekeyed_inside_migrate_become_deletes_peers_receive() -> None:
    a, b = open_db(site=SITE_A), open_db(site=SITE_B)
    for db in (a, b):
        db.conn.execute(TODOS)
        db.track("todos")
    a.conn.executemany(
        "INSERT INTO todos (id, title) VALUES (?, ?)",
        [("r1", "one"), ("r2", "two"), ("r3", "three"), ("gone", "deleted before")],
    )
    a.conn.execute("DELETE FROM todos WHERE id = 'gone'")
    b.merge(a.changes())
    since = a.db_version
    with a.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
        conn.execute("DELETE FROM todos WHERE id = 'r1'")
        conn.execute("UPDATE todos SET id = 'r2-new' WHERE id = 'r2'")
        conn.execute("INSERT INTO todos (id, title) VALUES ('gone', 'back')")
    assert live_keys(a) == {"r2-new", "r3", "gone"}
    with b.migrate("todos") as conn:
        conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    b.merge(a.changes(since=since))
    assert rows(b.conn, "todos") == rows(a.conn, "todos")
    assert {r[0][1] for r in rows(b.conn, "todos")} == {"r2-new", "r3", "gone"}
    # a concurrent edit of the deleted row on B does not bring it back (delete wins at cl 2)
    b.conn.execute("UPDATE todos SET title = 'x' WHERE id = 'r3'")
    a.merge(b.changes())
    assert rows(b.conn, "todos") == rows(a.conn, "todos")


# ---------------------------------------------------------------- any history


_op = st.tuples(
    st.sampled_from(["insert", "update", "delete"]),
    st.sampled_from(["k1", "k2", "k3", "k4"]),
    st.one_of(st.none(), st.integers(-3, 3), st.sampled_from(["a", "b"])),
)


def _apply(conn: sqlite3.Connection, ops: list[tuple[str, str, object]]) -> None:
    for kind, key, val in ops:
        if kind == "insert":
            conn.execute("INSERT OR IGNORE INTO todos (id, title) VALUES (?, ?)", (key, val))
        elif kind == "update":
            conn.execute("UPDATE todos SET title = ?, done = done + 1 WHERE id = ?", (val, key))
        else:
            conn.execute("DELETE FROM todos WHERE id = ?", (key,))


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(_op, max_size=8),
    window=st.lists(_op, max_size=8),
    on_b=st.lists(_op, max_size=4),
    after=st.lists(_op, max_size=4),
)
def test_any_history_around_a_rebuild_converges(
    before: list[tuple[str, str, object]],
    window: list[tuple[str, str, object]],
    on_b: list[tuple[str, str, object]],
    after: list[tuple[str, str, object]],
) -> None:
    a, b, c = open_db(site=SITE_A), open_db(site=SITE_B), open_db(site=SITE_C)
    for db in (a, b, c):
        db.conn.execute(TODOS)
        db.track("todos")
    _apply(a.conn, before)
    b.merge(a.changes())
    c.merge(a.changes())
    twelve_step(a.conn)
    _apply(a.conn, window)  # no trigger: crsync has not looked yet
    window_rows = rows(a.conn, "todos")
    for db in (b, c):
        with db.migrate("todos") as conn:
            conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
    _apply(b.conn, on_b)  # edits on B, concurrent with the window and the re-adoption
    c.merge(a.changes())  # C made no edit: it gets exactly A's table
    assert rows(c.conn, "todos") == window_rows
    a.merge(b.changes())
    b.merge(a.changes())
    _apply(a.conn, after)
    for _ in range(2):
        for x, y in ((a, b), (b, c), (c, a)):
            y.merge(x.changes())
    assert rows(a.conn, "todos") == rows(b.conn, "todos") == rows(c.conn, "todos")


def test_rebuilt_integer_key_table_keeps_its_opt_in_and_is_readopted(tmp_path: Path) -> None:
    """A table tracked with integer_keys='app-assigned' and rebuilt by sqlite-utils is
    re-adopted (the opt-in survives the rebuild), and edits around the rebuild reach a peer."""
    import sqlite_utils

    a = crsync.connect(tmp_path / "a.db")
    b = crsync.connect(tmp_path / "b.db")
    for d in (a, b):
        d.conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
        d.track("items", integer_keys="app-assigned")
    a.conn.execute("INSERT INTO items VALUES (?, 'before')", (crsync.new_id(),))
    sqlite_utils.Database(str(tmp_path / "a.db"))["items"].transform(types={"name": str})
    a.conn.execute("INSERT INTO items VALUES (?, 'after')", (crsync.new_id(),))
    b.merge(a.changes())
    assert a.tracked_tables() == ["items"]
    assert sorted(r[0] for r in b.conn.execute("SELECT name FROM items")) == ["after", "before"]
