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
        "CREATE TABLE x(id INTEGER PRIMARY KEY, a)",  # rowid alias: never NULL
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
