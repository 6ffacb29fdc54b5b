"""track() refuses tables that cannot converge, with a SchemaError naming table and problem."""

from __future__ import annotations

import pytest
from core_helpers import open_db

import crsync
from crsync import SchemaError

CASES = {
    "no primary key": ("CREATE TABLE x(a, b)", "PRIMARY KEY"),
    "nullable text pk": ("CREATE TABLE x(id TEXT PRIMARY KEY, a)", "nullable"),
    "nullable composite pk": (
        "CREATE TABLE x(a TEXT NOT NULL, b TEXT, c, PRIMARY KEY (a, b))",
        "nullable",
    ),
    "autoincrement": ("CREATE TABLE x(id INTEGER PRIMARY KEY AUTOINCREMENT, a)", "AUTOINCREMENT"),
    "autoincrement lower case": (
        "CREATE TABLE x(id integer primary key asc on conflict abort autoincrement, a)",
        "AUTOINCREMENT",
    ),
    "unique column": ("CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a UNIQUE)", "UNIQUE"),
    "unique table constraint": (
        "CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a, b, UNIQUE (a, b))",
        "UNIQUE",
    ),
    "not null without default": (
        "CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a NOT NULL)",
        "NOT NULL without a DEFAULT",
    ),
    "foreign key": (
        "CREATE TABLE parent(id TEXT PRIMARY KEY NOT NULL);"
        "CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, p REFERENCES parent(id))",
        "FOREIGN KEY",
    ),
    "column named -1": ('CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, "-1")', "'-1'"),
}


@pytest.mark.parametrize(("ddl", "problem"), list(CASES.values()), ids=list(CASES))
def test_track_refuses_with_table_and_problem(ddl: str, problem: str) -> None:
    db = open_db()
    db.conn.executescript(ddl)
    before = db.conn.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").fetchall()
    with pytest.raises(SchemaError) as err:
        db.track("x")
    assert err.value.table == "x"
    assert problem in str(err.value)
    assert "'x'" in str(err.value)
    # nothing was installed
    assert db.conn.execute("SELECT name, sql FROM sqlite_schema ORDER BY name").fetchall() == before
    assert db.tracked_tables() == []


def test_unique_index_created_separately_is_refused() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a)")
    db.conn.execute("CREATE UNIQUE INDEX x_a ON x(a)")
    with pytest.raises(SchemaError, match="x_a"):
        db.track("x")


def test_plain_index_is_accepted() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a)")
    db.conn.execute("CREATE INDEX x_a ON x(a)")
    db.track("x")
    assert db.tracked_tables() == ["x"]


def test_view_is_refused() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a)")
    db.conn.execute("CREATE VIEW v AS SELECT * FROM x")
    with pytest.raises(SchemaError, match="view") as err:
        db.track("v")
    assert err.value.table == "v"


def test_missing_table_is_refused() -> None:
    db = open_db()
    with pytest.raises(SchemaError, match="no such table") as err:
        db.track("nope")
    assert err.value.table == "nope"


@pytest.mark.parametrize("name", ["crsync_clock", "crsync_pending", "crsync_sites", "x__crsync"])
def test_crsync_internal_tables_are_refused(name: str) -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a)")
    db.track("x")
    with pytest.raises(SchemaError, match="crsync's own tables") as err:
        db.track(name)
    assert err.value.table == name


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE x(id INTEGER PRIMARY KEY NOT NULL, a) WITHOUT ROWID",  # no rowid
        "CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, a NOT NULL DEFAULT 0, b CHECK (b > 0))",
        "CREATE TABLE x(a TEXT NOT NULL, b INTEGER NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID",
        "CREATE TABLE x(id BLOB PRIMARY KEY NOT NULL)",
        "CREATE TABLE x(id TEXT PRIMARY KEY NOT NULL, \"autoincrement\" DEFAULT 'AUTOINCREMENT')",
    ],
)
def test_convergent_tables_are_accepted(ddl: str) -> None:
    db = open_db()
    db.conn.execute(ddl)
    db.track("x")
    assert db.tracked_tables() == ["x"]


def test_schema_error_is_a_crsync_error() -> None:
    assert issubclass(SchemaError, crsync.CrsyncError)


def test_every_problem_of_a_table_is_reported_at_once() -> None:
    db = open_db()
    db.conn.executescript(
        "CREATE TABLE parent(id TEXT PRIMARY KEY NOT NULL);"
        "CREATE TABLE x(id TEXT PRIMARY KEY, a UNIQUE, b NOT NULL, "
        "p REFERENCES parent(id), c, d, UNIQUE (c, d));"
        "CREATE UNIQUE INDEX x_by_b ON x(b)"
    )
    with pytest.raises(SchemaError) as err:
        db.track("x")
    problems = err.value.problems
    assert len(problems) == 6, problems
    text = str(err.value)
    assert "6 problems" in text
    for expected in (
        "primary key column 'id' is nullable",
        "UNIQUE constraint on (a)",
        "UNIQUE constraint on (c, d)",
        "UNIQUE index x_by_b on (b)",
        "column 'b' is NOT NULL without a DEFAULT",
        "FOREIGN KEY (p) REFERENCES 'parent'(id)",
    ):
        assert sum(expected in p for p in problems) == 1, expected
        assert expected in text
    assert "sqlite_autoindex" not in text
    assert "track-existing-app" in text


def test_a_single_problem_keeps_a_one_item_problem_list() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(a, b)")
    with pytest.raises(SchemaError) as err:
        db.track("x")
    assert len(err.value.problems) == 1 and "PRIMARY KEY" in err.value.problems[0]


@pytest.mark.parametrize(
    "ddl",
    [
        "CREATE TABLE x(id INTEGER PRIMARY KEY, a)",
        "CREATE TABLE x(id INTEGER PRIMARY KEY NOT NULL, a)",
        "CREATE TABLE x(id integer, a, PRIMARY KEY (id))",
    ],
)
def test_a_key_sqlite_assigns_is_refused_with_what_to_do(ddl: str) -> None:
    db = open_db()
    db.conn.execute(ddl)
    with pytest.raises(SchemaError) as err:
        db.track("x")
    text = str(err.value)
    for hint in ("INTEGER PRIMARY KEY", "crsync.new_id()", "integer_keys='app-assigned'", "rekey"):
        assert hint in text
    assert db.tracked_tables() == []


def test_integer_keys_opt_in_is_remembered_by_later_track_and_migrate() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id INTEGER PRIMARY KEY, a)")
    db.track("x", integer_keys="app-assigned")
    db.track("x")  # the app's next start: no need to repeat the opt-in
    with db.migrate("x") as conn:
        conn.execute("ALTER TABLE x ADD COLUMN b")
    assert db.tracked_tables() == ["x"]
    # untracked, the choice is forgotten
    db.untrack("x")
    with pytest.raises(SchemaError, match="INTEGER PRIMARY KEY"):
        db.track("x")


def test_integer_keys_takes_one_documented_value() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id INTEGER PRIMARY KEY, a)")
    with pytest.raises(crsync.CrsyncError, match="app-assigned"):
        db.track("x", integer_keys="yes")


def test_autoincrement_stays_refused_with_the_opt_in() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id INTEGER PRIMARY KEY AUTOINCREMENT, a)")
    with pytest.raises(SchemaError, match="AUTOINCREMENT") as err:
        db.track("x", integer_keys="app-assigned")
    assert len(err.value.problems) == 1


def test_integer_primary_key_desc_is_not_a_rowid_and_must_be_not_null() -> None:
    db = open_db()
    db.conn.execute("CREATE TABLE x(id INTEGER PRIMARY KEY DESC, a)")
    with pytest.raises(SchemaError, match="nullable"):
        db.track("x")
