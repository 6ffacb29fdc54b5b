"""Adding crsync to an app that already has a SQLite database, a schema and data.

Run it with ``python examples/existing_app.py`` (add ``--keep DIR`` to keep the files). No relay
is needed: two device files exchange change sets directly with ``changes_since`` and ``merge``
(a :class:`crsync.peer.Peer` does the same through a relay). The story:

1. version 1 of a notes app has been writing ``notes.db`` with plain ``sqlite3`` for a while;
2. crsync checks the schema and refuses what cannot converge (a UNIQUE index), the app's
   migration drops it;
3. ``crsync.connect`` + ``track`` on the existing file: existing rows get clocks (backfill) and
   appear in the change feed; the app's own ``sqlite3`` code keeps working unchanged and its
   writes are captured by triggers;
4. a second device with a fresh, empty install merges the feed and gets every row;
5. both edit offline, exchange only what the other lacks, and converge.
"""

from __future__ import annotations

import sqlite3
import sys
import uuid
from pathlib import Path

from _demo import run_in_workdir

import crsync

# ---------------------------------------------------------------- the existing app (no crsync)

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS notes (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    body TEXT NOT NULL DEFAULT '',
    pinned INTEGER NOT NULL DEFAULT 0,
    updated_at TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS notes_title ON notes (title);
CREATE TABLE IF NOT EXISTS tags (
    note_id TEXT NOT NULL,
    tag TEXT NOT NULL,
    PRIMARY KEY (note_id, tag)
);
"""

# Version 2: two devices can create notes with the same title while offline; a UNIQUE index
# could not hold after merging, so it becomes an ordinary index (the app shows duplicates).
MIGRATION_V2 = """
DROP INDEX IF EXISTS notes_title;
CREATE INDEX IF NOT EXISTS notes_title ON notes (title);
"""

SCHEMA_V2 = SCHEMA_V1.replace("CREATE UNIQUE INDEX", "CREATE INDEX")


def say(msg: str = "") -> None:
    print(msg, flush=True)


def app_add_note(conn: sqlite3.Connection, title: str, body: str, *tags: str) -> str:
    """How the app writes: plain SQL in a transaction, random (UUID) keys."""
    note_id = str(uuid.uuid4())
    with conn:
        conn.execute(
            "INSERT INTO notes (id, title, body, updated_at) VALUES (?, ?, ?, datetime('now'))",
            (note_id, title, body),
        )
        conn.executemany(
            "INSERT INTO tags (note_id, tag) VALUES (?, ?)", [(note_id, t) for t in tags]
        )
    return note_id


def note_id_by_title(conn: sqlite3.Connection, title: str) -> str:
    row = conn.execute("SELECT id FROM notes WHERE title = ?", (title,)).fetchone()
    assert row is not None, title
    return str(row[0])


def snapshot(conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    """Every note with its tags, independent of keys and insertion order."""
    return conn.execute(
        "SELECT n.title, n.body, n.pinned, "
        "(SELECT group_concat(tag, ',') FROM (SELECT tag FROM tags WHERE note_id = n.id "
        "ORDER BY tag)) FROM notes AS n ORDER BY n.title, n.id"
    ).fetchall()


def show(name: str, conn: sqlite3.Connection) -> list[tuple[object, ...]]:
    rows = snapshot(conn)
    say(f"  {name}:")
    for title, body, pinned, tags in rows:
        pin = " [pinned]" if pinned else ""
        say(f"    - {title!s}{pin}: {body!s}  tags={tags or ''}")
    return rows


def show_feed(changes: list[crsync.Change], limit: int = 20) -> None:
    for c in changes[:limit]:
        pk = crsync.unpack_pk(c.pk)
        key = ", ".join(str(v)[:8] for v in pk)
        val = repr(c.val) if len(repr(c.val)) <= 24 else repr(c.val)[:20] + "...'"
        what = "row exists" if c.cid == crsync.SENTINEL else f"{c.cid} = {val}"
        row = f"{c.table}({key})"
        say(
            f"    {row:<24} {what:<36} col_version={c.col_version} "
            f"db_version={c.db_version} cl={c.cl}"
        )
    if len(changes) > limit:
        say(f"    ... and {len(changes) - limit} more")


# ---------------------------------------------------------------- the walkthrough


def run(workdir: Path) -> bool:
    laptop_path = workdir / "notes.db"
    phone_path = workdir / "phone-notes.db"
    for path in (laptop_path, phone_path):  # start from scratch (e.g. a reused --keep DIR)
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)

    say("1. the existing app (version 1, plain sqlite3) has been writing notes.db")
    app = sqlite3.connect(laptop_path)
    app.executescript(SCHEMA_V1)
    app_add_note(app, "Groceries", "milk, eggs, coffee", "home")
    app_add_note(app, "Trip", "book the train to Lyon", "travel", "todo")
    app_add_note(app, "Ideas", "sync the notes app", "work")
    show("notes.db before crsync", app)
    app.close()

    say("\n2. crsync looks at the schema before replicating anything")
    laptop = crsync.connect(laptop_path)
    try:
        laptop.track("notes")
        say("  unexpected: a UNIQUE index was accepted")
        return False
    except crsync.SchemaError as exc:
        say(f"  refused: {exc}")
    say("  the app's migration to version 2 turns the UNIQUE index into a plain one")
    laptop.conn.executescript(MIGRATION_V2)

    say("\n3. track the tables: existing rows get clocks and appear in the change feed")
    laptop.track("notes")
    laptop.track("tags")
    cursor, feed = laptop.changes_since(0)
    say(f"  backfilled feed: {len(feed)} changes up to db_version {cursor}")
    show_feed(feed)
    # Per note one change per column (a row with columns exists through its cells); per tag,
    # a table with only key columns, one row-existence record.
    expected = 3 * 4 + 4 * 1
    if len(feed) != expected:
        say(f"  unexpected feed size {len(feed)} (expected {expected})")
        return False

    say("  the app keeps using its own sqlite3 connection; its writes are captured")
    app = sqlite3.connect(laptop_path)
    app_add_note(app, "Books", "read Designing Data-Intensive Applications", "home")
    app.close()
    _, new = laptop.changes_since(cursor)
    say(f"  feed since {cursor}: {len(new)} changes (only the new note and its tag)")
    show_feed(new)

    say("\n4. a second device installs the app (empty database) and merges the feed")
    fresh = sqlite3.connect(phone_path)
    fresh.executescript(SCHEMA_V2)
    fresh.close()
    phone = crsync.connect(phone_path)
    phone.track("notes")
    phone.track("tags")
    _, everything = laptop.changes_since(0)
    wins = phone.merge(everything)
    say(f"  phone merged {len(everything)} changes, {wins} applied")
    a, b = show("laptop", laptop.conn), show("phone", phone.conn)
    if a != b:
        say("  the phone did not receive everything")
        return False

    say("\n5. both edit offline, then exchange only what the other lacks")
    # What each side has already sent to the other (versions of the sender's clock).
    laptop_sent, phone_sent = laptop.db_version, phone.db_version
    trip = note_id_by_title(laptop.conn, "Trip")
    ideas = note_id_by_title(laptop.conn, "Ideas")
    laptop.conn.execute("UPDATE notes SET body = 'train booked, seat 42' WHERE id = ?", (trip,))
    laptop.conn.execute("DELETE FROM tags WHERE note_id = ? AND tag = 'todo'", (trip,))
    phone.conn.execute("UPDATE notes SET pinned = 1 WHERE id = ?", (trip,))
    phone.conn.execute("DELETE FROM notes WHERE id = ?", (ideas,))
    phone.conn.execute("DELETE FROM tags WHERE note_id = ?", (ideas,))
    show("laptop (offline)", laptop.conn)
    show("phone (offline)", phone.conn)

    laptop_sent, to_phone = laptop.changes_since(laptop_sent, exclude_site=phone.site_id)
    phone_sent, to_laptop = phone.changes_since(phone_sent, exclude_site=laptop.site_id)
    say(f"  laptop -> phone: {len(to_phone)} changes, phone -> laptop: {len(to_laptop)} changes")
    phone.merge(to_phone)
    laptop.merge(to_laptop)
    a, b = show("laptop", laptop.conn), show("phone", phone.conn)
    # Different columns of one row merge cell by cell: both edits of "Trip" survive.
    trip_row = next(r for r in a if r[0] == "Trip")
    ok = a == b and trip_row[1] == "train booked, seat 42" and trip_row[2] == 1
    ok = ok and all(r[0] != "Ideas" for r in a)
    laptop.close()
    phone.close()
    say("converged: " + ("yes" if ok else "NO"))
    return ok


def main() -> int:
    return run_in_workdir(__doc__.split("\n\n")[0], "crsync-existing-app-", run)


if __name__ == "__main__":
    sys.exit(main())
