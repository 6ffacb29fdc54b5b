"""The data directory's lock: one relay serves a directory at a time, and operator commands
that rewrite store files (restore, repairs) refuse while a relay serves it.

On POSIX the lock is ``flock`` on a descriptor opened read-only, so it never keeps a file open
for writing (a file system can still be remounted read-only under a running relay) and it dies
with the process. Elsewhere (Windows) the ``filelock`` package's lock is used.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from crsync.errors import CrsyncError

RELAY_LOCK = ".crsync-relay.lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


def create_owner_only(path: Path) -> None:
    """Create ``path`` empty with mode 0600 if it does not exist, whatever the umask (SQLite
    then gives its -wal and -shm files the same mode). A failure is left for SQLite to
    report when it opens the file."""
    if path.exists():
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # exists now, or cannot be created: SQLite reports it


class DataDirLock:
    """An exclusive, non-blocking OS lock on ``<data_dir>/.crsync-relay.lock``."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / RELAY_LOCK
        self._fd: int | None = None
        self._portable: filelock.BaseFileLock | None = None

    def try_acquire(self) -> bool:
        """Take the lock if no one holds it; False if another holder has it."""
        if fcntl is None:  # pragma: no cover - Windows
            self._portable = filelock.FileLock(self.path)
            try:
                self._portable.acquire(timeout=0)
            except filelock.Timeout:
                self._portable = None
                return False
            return True
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        fd = os.open(self.path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Release the lock (no-op if not held)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._portable is not None:  # pragma: no cover - Windows
            self._portable.release()
            self._portable = None


@contextlib.contextmanager
def exclusive(data_dir: Path, refusal: str) -> Iterator[DataDirLock]:
    """Hold the data directory's lock for a block; CrsyncError (``refusal``, then the lock
    file's path) if someone else holds it."""
    lock = DataDirLock(data_dir)
    if not lock.try_acquire():
        raise CrsyncError(f"{refusal} (it holds {lock.path})")
    try:
        yield lock
    finally:
        lock.release()


STORE_INDEX = ".crsync-relay-stores.sqlite3"


class StoreIndex:
    """Who created each store (the token subject), in a small SQLite file of the data
    directory: caps the stores one subject may create. Stores created before the index existed
    are not in it (and not counted)."""

    def __init__(self, data_dir: Path) -> None:
        import sqlite3

        path = data_dir / STORE_INDEX
        create_owner_only(path)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(
            "CREATE TABLE IF NOT EXISTS stores (store TEXT PRIMARY KEY, creator TEXT NOT NULL, "
            "created_at REAL NOT NULL)"
        )
        self.conn.execute("CREATE INDEX IF NOT EXISTS stores_creator ON stores (creator)")

    def created_by(self, subject: str) -> int:
        """How many stores ``subject`` created."""
        return int(
            self.conn.execute(
                "SELECT count(*) FROM stores WHERE creator = ?", (subject,)
            ).fetchone()[0]
        )

    def add(self, store: str, subject: str) -> None:
        """Record that ``subject`` created ``store``."""
        import time

        self.conn.execute(
            "INSERT OR IGNORE INTO stores VALUES (?, ?, ?)", (store, subject, time.time())
        )

    def close(self) -> None:
        """Close the index."""
        self.conn.close()
