"""The todo list of one device: plain SQL on a replicated table, no user interface.

Every write is ordinary SQL through :attr:`crsync.Database.conn`; crsync's triggers capture
the changed cells, so the sync thread (:mod:`examples.todo_sync.sync`) can push them and merge
what other devices wrote. Two devices that edit different columns of the same todo keep both
edits (column-level last-writer-wins); a todo deleted on one device disappears everywhere.
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass

import crsync

TABLE = "todos"
SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL DEFAULT 0
)
"""
MAX_TITLE = 500


@dataclass(frozen=True)
class Todo:
    """One row of the list, as shown to the user."""

    id: str
    title: str
    done: bool
    created: float


class TodoModel:
    """Add, toggle, rename, delete and list todos in one database file."""

    def __init__(self, db: crsync.Database) -> None:
        """Wrap an open database, creating and tracking the ``todos`` table if needed."""
        self.db = db
        db.conn.execute(SCHEMA)
        db.track(TABLE)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> TodoModel:
        """Open (or create) a todo database file."""
        return cls(crsync.connect(path))

    @property
    def path(self) -> str | None:
        return self.db.path

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ reading

    def list(self) -> list[Todo]:
        """All todos, oldest first (the order is the same on every device)."""
        rows = self.db.conn.execute(
            "SELECT id, title, done, created FROM todos ORDER BY created, id"
        ).fetchall()
        return [Todo(r[0], r[1], bool(r[2]), r[3]) for r in rows]

    def get(self, todo_id: str) -> Todo:
        """One todo by id.

        Raises:
            KeyError: no such todo (for instance another device deleted it).
        """
        row = self.db.conn.execute(
            "SELECT id, title, done, created FROM todos WHERE id = ?", (todo_id,)
        ).fetchone()
        if row is None:
            raise KeyError(f"no todo with id {todo_id!r}")
        return Todo(row[0], row[1], bool(row[2]), row[3])

    # ------------------------------------------------------------------ writing

    def add(self, title: str) -> str:
        """Add a todo; returns its id (a random UUID, so devices never collide).

        Raises:
            ValueError: the title is empty or too long.
        """
        title = _clean_title(title)
        todo_id = uuid.uuid4().hex
        self.db.conn.execute(
            "INSERT INTO todos (id, title, done, created) VALUES (?, ?, 0, ?)",
            (todo_id, title, time.time()),
        )
        return todo_id

    def set_done(self, todo_id: str, done: bool) -> None:
        """Mark a todo done or not done (no write, and no sync traffic, if it already is)."""
        self._update(todo_id, "UPDATE todos SET done = ? WHERE id = ? AND done != ?", done)

    def toggle(self, todo_id: str) -> bool:
        """Flip a todo's done flag; returns the new value."""
        done = not self.get(todo_id).done
        self.set_done(todo_id, done)
        return done

    def rename(self, todo_id: str, title: str) -> None:
        """Change a todo's title.

        Raises:
            ValueError: the title is empty or too long.
            KeyError: no such todo.
        """
        title = _clean_title(title)
        self._update(todo_id, "UPDATE todos SET title = ? WHERE id = ? AND title != ?", title)

    def delete(self, todo_id: str) -> None:
        """Delete a todo (on every device once synced).

        Raises:
            KeyError: no such todo.
        """
        if self.db.conn.execute("DELETE FROM todos WHERE id = ?", (todo_id,)).rowcount == 0:
            raise KeyError(f"no todo with id {todo_id!r}")

    def clear_done(self) -> int:
        """Delete every done todo; returns how many."""
        return self.db.conn.execute("DELETE FROM todos WHERE done = 1").rowcount

    def _update(self, todo_id: str, sql: str, value: object) -> None:
        if self.db.conn.execute(sql, (value, todo_id, value)).rowcount == 0:
            self.get(todo_id)  # raises KeyError if the todo is gone; otherwise nothing changed


def _clean_title(title: str) -> str:
    title = " ".join(title.split())
    if not title:
        raise ValueError("a todo needs a title")
    if len(title) > MAX_TITLE:
        raise ValueError(f"a todo title is at most {MAX_TITLE} characters, not {len(title)}")
    return title
