"""Starting a second device by copying the database file: both copies converge through a relay."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

import crsync
from crsync import identity
from crsync.peer import Peer

from .conftest import RelayProcess
from .helpers import eventually, open_db, rows

pytestmark = pytest.mark.anyio


async def _sync(db: crsync.Database, relay: RelayProcess, token: str) -> None:
    with anyio.fail_after(30):
        async with Peer(db, relay.url, store="copied", token=token) as p:
            await p.wait_synced()


async def test_a_copied_database_and_its_original_converge_through_the_relay(
    relay: RelayProcess, tmp_path: Path
) -> None:
    tok = relay.token("copied")
    laptop = open_db(tmp_path / "laptop.db")
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'synced before the copy')")
    await _sync(laptop, relay, tok)
    # Written after the last sync, then the file is copied to the desktop: the row exists on
    # both, and only the laptop's own identity has pushed it... or not yet.
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'unsynced at the copy')")
    laptop.close()
    shutil.copy(tmp_path / "laptop.db", tmp_path / "desktop.db")
    laptop = crsync.connect(tmp_path / "laptop.db")
    desktop = crsync.connect(tmp_path / "desktop.db")
    assert desktop.site_id != laptop.site_id
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('L', 'new on the laptop')")
    desktop.conn.execute("INSERT INTO todos (id, title) VALUES ('D', 'new on the desktop')")
    desktop.conn.execute("UPDATE todos SET title = 'edited on the desktop' WHERE id = '1'")
    await _sync(desktop, relay, tok)
    await _sync(laptop, relay, tok)
    await _sync(desktop, relay, tok)
    expected = [
        ("1", "edited on the desktop"),
        ("2", "unsynced at the copy"),
        ("D", "new on the desktop"),
        ("L", "new on the laptop"),
    ]
    assert [r[:2] for r in rows(laptop)] == expected
    assert rows(desktop) == rows(laptop)


async def test_a_file_moved_to_another_disk_pushes_what_it_had_not_pushed(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """A move across file systems looks like a copy (new inode): the file takes a new site id,
    and the rows its old identity had not pushed yet are pushed anyway (full push)."""
    tok = relay.token("copied")
    old = open_db(tmp_path / "old.db")
    old.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'synced')")
    await _sync(old, relay, tok)
    old.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'never pushed by the old file')")
    old_site = old.site_id
    old.close()
    shutil.copy(tmp_path / "old.db", tmp_path / "moved.db")
    for suffix in ("", "-wal", "-shm"):
        Path(str(tmp_path / "old.db") + suffix).unlink(missing_ok=True)  # noqa: ASYNC240
    moved = crsync.connect(tmp_path / "moved.db")
    assert moved.site_id != old_site
    await _sync(moved, relay, tok)
    phone = open_db(tmp_path / "phone.db")
    await _sync(phone, relay, tok)
    assert [r[:2] for r in rows(phone)] == [("1", "synced"), ("2", "never pushed by the old file")]
    # the full push was done once: a later session pushes only the file's own changes
    assert identity.full_push_pending(moved.conn) is None


async def test_a_copy_taken_while_the_app_syncs_converges_with_both_peers_running(
    relay: RelayProcess, tmp_path: Path
) -> None:
    tok = relay.token("copied")
    laptop = open_db(tmp_path / "laptop.db")
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'before the copy')")
    with anyio.fail_after(60):
        async with Peer(laptop, relay.url, store="copied", token=tok) as pl:
            await pl.wait_synced()
            # copied with its WAL while the app has it open and syncing
            for suffix in ("", "-wal"):
                shutil.copy(
                    str(tmp_path / "laptop.db") + suffix, str(tmp_path / "desk.db") + suffix
                )
            desktop = crsync.connect(tmp_path / "desk.db")
            assert desktop.site_id != laptop.site_id
            async with Peer(desktop, relay.url, store="copied", token=tok) as pd:
                laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('L', 'laptop')")
                desktop.conn.execute("INSERT INTO todos (id, title) VALUES ('D', 'desktop')")
                pl.notify()
                pd.notify()
                await eventually(lambda: len(rows(laptop)) == 3, "the desktop's row on the laptop")
                await eventually(lambda: len(rows(desktop)) == 3, "the laptop's row on the desktop")
                await pl.wait_synced()
                await pd.wait_synced()
    assert rows(laptop) == rows(desktop)
    assert [r[0] for r in rows(laptop)] == ["1", "D", "L"]
