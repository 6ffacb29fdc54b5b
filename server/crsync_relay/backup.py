"""Backup of a live store (SQLite online backup) and restore into a data directory."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from crsync.errors import CrsyncError

from .hub import STORE_SUFFIX, check_store_id


def backup_store(data_dir: Path, store: str, dest: Path) -> int:
    """Copy a store to ``dest`` with SQLite's online backup: consistent, the relay keeps serving.

    Returns:
        The relay version (head) captured in the copy.

    Raises:
        CrsyncError: no such store, or the destination exists.
    """
    src = data_dir / (check_store_id(store) + STORE_SUFFIX)
    if not src.exists():
        raise CrsyncError(f"no store {store!r} in {data_dir}")
    if dest.exists():
        raise CrsyncError(f"{dest} already exists; choose a new file name")
    source = sqlite3.connect(f"file:{src}?mode=ro", uri=True)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
        head = target.execute("SELECT value FROM relay_meta WHERE key = 'head'").fetchone()
        check = target.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise CrsyncError(f"the backup of {store!r} failed its integrity check: {check}")
    finally:
        target.close()
        source.close()
    return int(head[0]) if head else 0


def restore_store(data_dir: Path, store: str, backup: Path, *, force: bool = False) -> str:
    """Install a backup as a store. The relay must not have the store open (stop it first).

    The restored store gets a **new epoch**: devices that synced after the backup was taken hold
    changes the backup lacks, and their acknowledged positions are no longer true. A new epoch
    makes every device re-push everything it holds on its next connection, so the store ends
    complete again.

    Returns:
        The new epoch.

    Raises:
        CrsyncError: the backup is not a store file, or the store exists and ``force`` is false.
    """
    dest = data_dir / (check_store_id(store) + STORE_SUFFIX)
    try:
        conn = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        try:
            conn.execute("SELECT value FROM relay_meta WHERE key = 'epoch'").fetchone()
            ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise CrsyncError(f"{backup} is not a relay store backup: {exc}") from None
    if ok != "ok":
        raise CrsyncError(f"{backup} fails its integrity check: {ok}")
    if dest.exists() and not force:
        raise CrsyncError(f"store {store!r} exists; pass --force to replace it")
    data_dir.mkdir(parents=True, exist_ok=True)
    for suffix in ("-wal", "-shm"):
        Path(str(dest) + suffix).unlink(missing_ok=True)
    tmp = dest.with_name(dest.name + ".restoring")
    shutil.copyfile(backup, tmp)
    tmp.replace(dest)
    return reset_epoch(data_dir, store)


def reset_epoch(data_dir: Path, store: str) -> str:
    """Give a store a new epoch: every device re-pushes everything it holds on next connect."""
    import uuid

    path = data_dir / (check_store_id(store) + STORE_SUFFIX)
    if not path.exists():
        raise CrsyncError(f"no store {store!r} in {data_dir}")
    epoch = uuid.uuid4().hex
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute("UPDATE relay_meta SET value = ? WHERE key = 'epoch'", (epoch,))
    finally:
        conn.close()
    return epoch
