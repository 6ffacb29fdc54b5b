"""A device database restored from a backup (or copied) must not shadow its own later writes."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import pytest

import crsync
from crsync.peer import Peer

from .conftest import RelayProcess
from .helpers import open_db, rows

pytestmark = pytest.mark.anyio


def test_reset_site_keeps_history_attributed_to_the_old_id(tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
    old = db.site_id
    new = db.reset_site()
    assert new != old and db.site_id == new and len(new) == 16
    assert {c.site_id for c in db.changes()} == {old}
    db.conn.execute("UPDATE todos SET title = 'y' WHERE id = '1'")
    by_cid = {c.cid: c.site_id for c in db.changes()}
    assert by_cid["title"] == new and by_cid["done"] == old
    # another connection on the same file sees the new identity
    other = crsync.connect(tmp_path / "a.db")
    assert other.site_id == new


async def test_a_restored_device_gets_a_new_site_and_loses_nothing(
    relay: RelayProcess, tmp_path: Path
) -> None:
    tok = relay.token("r")
    laptop = open_db(tmp_path / "laptop.db")
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'before backup')")
    with anyio.fail_after(30):
        async with Peer(laptop, relay.url, store="r", token=tok) as p:
            await p.wait_synced()
    laptop.close()
    shutil.copy(tmp_path / "laptop.db", tmp_path / "backup.db")
    laptop = open_db(tmp_path / "laptop.db")
    for i in range(2, 6):  # more pushes than the backup knows of
        laptop.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'after backup')", (str(i),))
        with anyio.fail_after(30):
            async with Peer(laptop, relay.url, store="r", token=tok) as p:
                await p.wait_synced()
    laptop.close()
    for suffix in ("-wal", "-shm"):
        Path(str(tmp_path / "laptop.db") + suffix).unlink(missing_ok=True)  # noqa: ASYNC240
    # Restored in place (same inode, so the file identity does not tell; a restore as a new
    # file is caught on open, see test_copied_file_sync): the relay's acknowledgement does.
    shutil.copyfile(tmp_path / "backup.db", tmp_path / "laptop.db")
    restored = crsync.connect(tmp_path / "laptop.db")
    old_site = restored.site_id
    restored.conn.execute("INSERT INTO todos (id, title) VALUES ('9', 'written on the restore')")
    phone = open_db(tmp_path / "phone.db")
    with anyio.fail_after(30):
        async with Peer(restored, relay.url, store="r", token=tok) as p:
            await p.wait_synced()
            assert p.site_id != old_site
        async with Peer(phone, relay.url, store="r", token=tok) as p:
            await p.wait_synced()
    assert restored.site_id != old_site
    ids = [r[0] for r in rows(phone)]
    assert ids == ["1", "2", "3", "4", "5", "9"]
    assert rows(restored) == rows(phone)


async def test_a_table_tracked_while_connected_is_announced_and_syncs(
    relay: RelayProcess, tmp_path: Path
) -> None:
    tok = relay.token("late")
    a = open_db(tmp_path / "a.db")
    b = open_db(tmp_path / "b.db")
    with anyio.fail_after(30):
        async with (
            Peer(a, relay.url, store="late", token=tok) as pa,
            Peer(b, relay.url, store="late", token=tok) as pb,
        ):
            await pa.wait_synced()
            for db in (a, b):
                db.conn.execute("CREATE TABLE tags (k TEXT PRIMARY KEY NOT NULL, v TEXT)")
                db.track("tags")
            a.conn.execute("INSERT INTO tags VALUES ('x', 'late table')")
            pa.notify()
            await pa.wait_synced()
            await pb.wait_synced()
            assert pa.stats.connects == 2  # reconnected to announce the new table
    assert b.conn.execute("SELECT * FROM tags").fetchall() == [("x", "late table")]
    relay_schema = relay.wait_for(r"relay\.connect", 3)
    assert relay_schema >= 3
