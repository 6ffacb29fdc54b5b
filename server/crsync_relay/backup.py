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

from .datadir import DataDir
from .store import RelayStore


def _create_exclusive(path: Path) -> None:
    """Create an empty owner-only file; refuse an existing file or a symbolic link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        os.close(os.open(path, flags, 0o600))
    except FileExistsError:
        raise CrsyncError(f"{path} already exists; choose a new file name") from None
    except OSError as exc:
        raise CrsyncError(f"cannot create {path}: {exc.strerror or exc}") from None


def backup_store(data_dir: Path, store: str, dest: Path) -> int:
    """Copy a store to ``dest`` with SQLite's online backup: consistent, the relay keeps serving.

    Returns:
        The relay version (head) captured in the copy.

    Raises:
        CrsyncError: no such store, the destination exists (or is a link), or the copy fails.
    """
    src = DataDir(data_dir).existing_store(store)
    _create_exclusive(dest)
    try:
        head, check = RelayStore.backup_file(src, dest)
    except sqlite3.Error as exc:
        dest.unlink(missing_ok=True)
        raise CrsyncError(f"the backup of {store!r} failed: {exc}") from None
    if check != "ok":
        dest.unlink(missing_ok=True)
        raise CrsyncError(f"the backup of {store!r} failed its integrity check: {check}")
    return head


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
    layout = DataDir(data_dir)
    dest = layout.store_path(store)
    if not backup.is_file():
        raise CrsyncError(f"no backup file {backup}")
    RelayStore.check_file(backup)
    if dest.exists() and not force:
        raise CrsyncError(f"store {store!r} exists; pass --force to replace it")
    layout.create()
    with layout.exclusive(f"a relay is serving {data_dir}; stop it before restoring a store"):
        tmp = dest.with_name(dest.name + ".restoring")
        tmp.unlink(missing_ok=True)
        _create_exclusive(tmp)
        shutil.copyfile(backup, tmp)
        try:
            RelayStore.check_file(tmp)  # the copy itself, not only its source
            RelayStore.set_file_epoch(tmp, uuid.uuid4().hex)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for suffix in ("-wal", "-shm"):
            Path(str(dest) + suffix).unlink(missing_ok=True)
        tmp.replace(dest)
        return RelayStore.file_epoch(dest)
