"""The relay's data directory: its layout (one ``<store id>.store.sqlite3`` file per store,
the lock file, the store index), store ids, and the lock.

One relay serves a directory at a time, and operator commands that rewrite store files
(restore, repairs) refuse while a relay serves it.

On POSIX the lock is ``flock`` on a descriptor opened read-only, so it never keeps a file open
for writing (a file system can still be remounted read-only under a running relay) and it dies
with the process. Elsewhere (Windows) the ``filelock`` package's lock is used.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from pathlib import Path

import attrs
import filelock

from crsync.errors import CrsyncError
from crsync.protocol import ErrorCode, quote

from .refusal import Refusal

RELAY_LOCK = ".crsync-relay.lock"
"""File in the data directory a serving relay holds an OS lock on (one relay per directory;
``restore`` refuses while it is held)."""
STORE_SUFFIX = ".store.sqlite3"
STORE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


class BadStoreId(Refusal):
    """A store id that is not acceptable (charset, length, path-like)."""

    code = ErrorCode.BAD_STORE.value


def check_store_id(store: str) -> str:
    """Validate a store id: 1-128 of ``A-Z a-z 0-9 _ . -``, starting alphanumeric.

    Raises:
        BadStoreId: naming the problem; path-like ids (``../x``, ``/etc/x``, ``a/b``) included.
    """
    if not isinstance(store, str) or not STORE_ID_RE.fullmatch(store) or ".." in store:
        raise BadStoreId(
            f"invalid store id {quote(store)}: use 1-128 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit"
        )
    return store


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


@attrs.frozen
class DataDir:
    """The layout of a relay's data directory: where each store's file is, which stores exist,
    the lock, the store index."""

    path: Path

    def create(self) -> None:
        """Create the directory (owner-only) if it is missing."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)

    def store_path(self, store: str) -> Path:
        """File of a store.

        Raises:
            BadStoreId: the id is not acceptable.
        """
        return self.path / (check_store_id(store) + STORE_SUFFIX)

    def existing_store(self, store: str) -> Path:
        """File of a store that exists; CrsyncError if there is none."""
        path = self.store_path(store)
        if not path.exists():
            raise CrsyncError(f"no store {store!r} in {self.path}")
        return path

    def stores(self) -> list[tuple[str, Path]]:
        """Every store in the directory, ``(id, file)``, sorted by file name."""
        return [
            (p.name[: -len(STORE_SUFFIX)], p) for p in sorted(self.path.glob("*" + STORE_SUFFIX))
        ]

    @contextlib.contextmanager
    def exclusive(self, refusal: str) -> Iterator[DataDirLock]:
        """Hold the directory's lock for a block; CrsyncError (``refusal``, then the lock
        file's path) if someone else holds it."""
        lock = DataDirLock(self.path)
        if not lock.try_acquire():
            raise CrsyncError(f"{refusal} (it holds {lock.path})")
        try:
            yield lock
        finally:
            lock.release()

    def store_index(self) -> StoreIndex:
        """Open the directory's store index."""
        return StoreIndex(self.path)
