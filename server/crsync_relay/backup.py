"""Backup of a live store (SQLite online backup) and restore into a data directory.

Paths are used exactly as given: SQLite is handed ``file:`` URIs built from the resolved path
(so ``#``, ``?`` and ``%`` in a file name are never read as URI syntax), the backup file is
created owner-only and never through a symbolic link, and a restore verifies its own copy
before it replaces the store.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import uuid
from pathlib import Path

from crsync.errors import CrsyncError

from .datadir import exclusive
from .hub import STORE_SUFFIX, check_store_id


def _read_only_uri(path: Path) -> str:
    return path.resolve().as_uri() + "?mode=ro"


def _create_exclusive(path: Path) -> None:
    """Create an empty owner-only file; refuse an existing file or a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        raise CrsyncError(f"{path} already exists; choose a new file name") from None
    except OSError as exc:
        raise CrsyncError(f"cannot create {path}: {exc.strerror or exc}") from None


def _check_store_file(path: Path) -> None:
    """A readable relay store that passes SQLite's integrity check, or CrsyncError."""
    try:
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            conn.execute("SELECT value FROM relay_meta WHERE key = 'epoch'").fetchone()
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CrsyncError(f"{path} is not a relay store backup: {exc}") from None
    if ok != "ok":
        raise CrsyncError(f"{path} fails its integrity check: {ok}")


def backup_store(data_dir: Path, store: str, dest: Path) -> int:
    """Copy a store to ``dest`` with SQLite's online backup: consistent, the relay keeps serving.

    Returns:
        The relay version (head) captured in the copy.

    Raises:
        CrsyncError: no such store, the destination exists (or is a link), or the copy fails.
    """
    src = data_dir / (check_store_id(store) + STORE_SUFFIX)
    if not src.exists():
        raise CrsyncError(f"no store {store!r} in {data_dir}")
    _create_exclusive(dest)
    try:
        source = sqlite3.connect(_read_only_uri(src), uri=True)
        try:
            target = sqlite3.connect(dest)
            try:
                source.backup(target)
                head = target.execute(
                    "SELECT value FROM relay_meta WHERE key = 'head'"
                ).fetchone()
                check = target.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                target.close()
        finally:
            source.close()
    except sqlite3.Error as exc:
        dest.unlink(missing_ok=True)
        raise CrsyncError(f"the backup of {store!r} failed: {exc}") from None
    if check != "ok":
        dest.unlink(missing_ok=True)
        raise CrsyncError(f"the backup of {store!r} failed its integrity check: {check}")
    return int(head[0]) if head else 0


def restore_store(data_dir: Path, store: str, backup: Path, *, force: bool = False) -> str:
    """Install a backup as a store. The relay must not be serving the data directory.

    The restored store gets a **new epoch**: devices that synced after the backup was taken hold
    changes the backup lacks, and their acknowledged positions are no longer true. A new epoch
    makes every device re-push everything it holds on its next connection, so the store ends
    complete again.

    Returns:
        The new epoch.

    Raises:
        CrsyncError: the backup is not a store file, the store exists and ``force`` is false,
            or a relay is serving the data directory.
    """
    dest = data_dir / (check_store_id(store) + STORE_SUFFIX)
    if not backup.is_file():
        raise CrsyncError(f"no backup file {backup}")
    _check_store_file(backup)
    if dest.exists() and not force:
        raise CrsyncError(f"store {store!r} exists; pass --force to replace it")
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with exclusive(data_dir, f"a relay is serving {data_dir}; stop it before restoring a store"):
        tmp = dest.with_name(dest.name + ".restoring")
        tmp.unlink(missing_ok=True)
        _create_exclusive(tmp)
        shutil.copyfile(backup, tmp)
        try:
            _check_store_file(tmp)  # the copy itself, not only its source
            _set_epoch(tmp, uuid.uuid4().hex)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for suffix in ("-wal", "-shm"):
            Path(str(dest) + suffix).unlink(missing_ok=True)
        tmp.replace(dest)
        return _epoch(dest)


def _set_epoch(path: Path, epoch: str) -> None:
    try:
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute("UPDATE relay_meta SET value = ? WHERE key = 'epoch'", (epoch,))
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CrsyncError(f"cannot set the epoch of {path}: {exc}") from None


def _epoch(path: Path) -> str:
    conn = sqlite3.connect(_read_only_uri(path), uri=True)
    try:
        return str(conn.execute("SELECT value FROM relay_meta WHERE key = 'epoch'").fetchone()[0])
    finally:
        conn.close()

