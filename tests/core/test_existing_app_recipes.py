"""The rebuild recipes of docs/guides/track-existing-app.md, run as written.

Each ``#### Recipe: ...`` section holds one ``sql`` block whose ``-- before:`` comment is the
table it fixes. For each: create that table with rows, see ``track`` refuse it, run the recipe,
see ``track`` accept it with the rows intact.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest

import crsync

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "track-existing-app.md"
SECTION = re.compile(r"^#### Recipe: (.+?)\n(.*?)(?=^#{2,4} )", re.DOTALL | re.MULTILINE)
SQL = re.compile(r"^```sql\n(.*?)^```", re.DOTALL | re.MULTILINE)

ROWS = {
    "attachments": "INSERT INTO notes VALUES ('n1'); "
    "INSERT INTO attachments VALUES ('a1', 'n1', 'x.png'), ('a2', 'gone', 'y.png')",
    "log": "INSERT INTO log VALUES ('t1', 'one'), ('t1', 'one'), (NULL, 'two')",
    "contacts": "INSERT INTO contacts VALUES ('c1', 'Ada'), (NULL, 'Bob')",
    "tasks": "INSERT INTO tasks (title) VALUES ('one'), ('two')",
    "tags": "INSERT INTO tags VALUES ('t1', 'red'), ('t2', 'blue')",
    "items": "INSERT INTO items VALUES ('i1', 'one')",
}
SUPPORT = {"attachments": "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL)"}


def _recipes() -> dict[str, str]:
    text = GUIDE.read_text(encoding="utf-8") + "\n## end\n"
    out = {}
    for title, body in SECTION.findall(text):
        blocks = SQL.findall(body)
        if blocks:
            assert len(blocks) == 1, title
            out[title.strip()] = blocks[0]
    return out


def _before(script: str) -> str:
    lines = [ln for ln in script.splitlines() if ln.startswith("--")]
    assert lines and lines[0].startswith("-- before:"), script
    return " ".join(ln.removeprefix("-- before:").removeprefix("--").strip() for ln in lines)


def _data(conn: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    cols = [
        r[0]
        for r in conn.execute("SELECT name FROM pragma_table_info(?)", (table,))
        if r[0] != "id"
    ]
    sel = ", ".join(cols)
    return sorted(conn.execute(f"SELECT {sel} FROM {table}").fetchall(), key=repr)


def test_the_guide_has_a_recipe_for_each_refusal() -> None:
    assert set(_recipes()) >= {
        "foreign keys",
        "no primary key",
        "nullable key",
        "AUTOINCREMENT",
        "UNIQUE",
        "NOT NULL without a DEFAULT",
    }


@pytest.mark.parametrize(("title", "script"), sorted(_recipes().items()))
def test_a_recipe_makes_its_table_trackable_and_keeps_the_rows(
    title: str, script: str, tmp_path: Path
) -> None:
    before = _before(script)
    table = re.match(r"CREATE TABLE (\w+)", before)
    assert table is not None, before
    name = table.group(1)
    db = crsync.connect(tmp_path / "app.db")
    conn = db.conn
    if name in SUPPORT:
        conn.execute(SUPPORT[name])
    conn.execute(before)
    conn.executescript(ROWS[name])
    data = _data(conn, name)
    with pytest.raises(crsync.SchemaError):
        db.track(name)
    conn.executescript(script)
    assert _data(conn, name) == data
    if name == "tasks":  # AUTOINCREMENT leads to the integer-keys recipe
        with pytest.raises(crsync.SchemaError, match="integer_keys"):
            db.track(name)
        crsync.rekey(conn, name)
        db.track(name, integer_keys="app-assigned")
    else:
        db.track(name)
    assert db.tracked_tables() == [name]
    keys = [r[0] for r in conn.execute(f"SELECT id FROM {name}")]
    assert None not in keys and len(set(keys)) == len(keys)
    assert _data(conn, name) == data
