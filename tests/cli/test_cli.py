"""The ``crsync`` command line, in process (``main(argv) -> int``) and as a real process."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import crsync
from crsync import positions
from crsync.cli import main


def _app(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, n INTEGER)")
    conn.execute("INSERT INTO todos VALUES ('a', 'milk', 9223372036854775807)")
    conn.execute("CREATE TABLE bad (x TEXT)")
    conn.commit()
    conn.close()
    return path


def test_triggers_prints_sql_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    before = db.read_bytes()
    assert main(["triggers", str(db), "todos"]) == 0
    out = capsys.readouterr().out
    assert 'CREATE TRIGGER "todos__crsync_ins" AFTER INSERT ON "todos"' in out
    assert db.read_bytes() == before


def test_track_status_changes_untrack_round_trip(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    assert main(["track", str(db), "todos"]) == 0
    assert main(["status", str(db), "--json"]) == 0
    status = json.loads(capsys.readouterr().out.split("tracking todos\n", 1)[-1])
    assert status["tables"][0]["table"] == "todos" and status["tables"][0]["rows"] == 1
    assert status["unacked_local_changes"] == {"(never synced)": 2}
    assert main(["changes", str(db), "--since", "0", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert {(x["cid"], json.dumps(x["val"])) for x in lines} == {
        ("title", '"milk"'),
        ("n", '{"int": "9223372036854775807"}'),
    }
    assert main(["untrack", str(db), "todos"]) == 0
    assert crsync.connect(db).tracked_tables() == []


def test_status_shows_metadata_tombstones_collected_deletes_and_the_horizon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _app(tmp_path / "app.db")
    db = crsync.connect(path)
    db.track("todos")
    db.conn.executemany("INSERT INTO todos (id, title) VALUES (?, 'x')", [("b",), ("c",), ("d",)])
    db.conn.execute("DELETE FROM todos WHERE id IN ('b', 'c')")
    positions.reset(db, "relay:s", "E")
    positions.record(db, "relay:s", "push", "E", db.db_version)
    positions.merge_and_record(db, [], "relay:s", "E", 4)
    positions.apply_horizon(db, "relay:s", 1)  # sets the mark at relay version 4
    positions.apply_horizon(db, "relay:s", 4)  # compacts both deletes
    db.conn.execute("DELETE FROM todos WHERE id = 'd'")  # a tombstone not compacted
    db.close()
    assert main(["status", str(path), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)["metadata"]
    assert (m["rows"], m["tombstones"], m["collected"], m["horizon"]) == (1, 1, 2, 4)
    assert m["metadata_bytes"] > 0 and m["horizon_seen_at"] is not None
    assert main(["status", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rows          1 live, 1 tombstones, 2 collected deletes" in out
    assert "horizon       relay version 4 (heard " in out
    assert "per live row" in out


def test_reset_site_gives_a_new_identity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = _app(tmp_path / "app.db")
    old = crsync.connect(db).site_id
    assert main(["reset-site", str(db)]) == 0
    assert crsync.connect(db).site_id != old
    assert old.hex() in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["track", "{dir}/missing.db", "t"], "no such database file: {dir}/missing.db"),
        (["track", "{dir}/app.db", "nope"], "table 'nope': no such table"),
        (["track", "{dir}/app.db", "bad"], "table 'bad': has no PRIMARY KEY"),
        (["untrack", "{dir}/app.db", "todos"], "table 'todos' is not tracked"),
        (["changes", "{dir}/app.db", "--since", "-1"], "since must be a non-negative integer"),
        (
            ["sync", "{dir}/app.db", "--url", "http://x", "--store", "s"],
            "relay URL must start with ws:// or wss://",
        ),
    ],
)
def test_user_errors_print_one_line_and_exit_nonzero(
    tmp_path: Path, argv: list[str], message: str
) -> None:
    _app(tmp_path / "app.db")
    args = [a.format(dir=tmp_path) for a in argv]
    proc = subprocess.run(
        [sys.executable, "-m", "crsync", *args], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("crsync: error: ")
    assert message.format(dir=tmp_path) in lines[0]
    assert "Traceback" not in proc.stderr


def test_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    proc = subprocess.run(
        [sys.executable, "-m", "crsync", "status", str(junk)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("crsync: error: ") and "Traceback" not in proc.stderr
