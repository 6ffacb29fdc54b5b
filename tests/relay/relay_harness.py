"""What the relay-process tests of this directory share: running a relay that must stop
cleanly (``test_deploy_files.py`` too) and, for the single-file relays (``test_zipapp.py``: the
``.pyz``; ``test_binary.py``: the PyInstaller executable), building the artifact and syncing
one row between two fresh databases through it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from crsync_relay.process import RelayLauncher

import crsync
from crsync.peer import Peer

SCHEMA = "CREATE TABLE notes (id TEXT PRIMARY KEY NOT NULL, body TEXT)"


def build(script: Path, out: Path, *, timeout: float) -> Path:
    """Run the build script ``script --output out``; assert it succeeded and made ``out``."""
    proc = subprocess.run(
        [sys.executable, str(script), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out.is_file()
    return out


@contextmanager
def running(relay: RelayLauncher) -> Iterator[RelayLauncher]:
    """Start ``relay``, yield it once it listens; on exit SIGTERM it and check that it stopped
    cleanly (exit status 0, its ``relay.stopped`` line logged)."""
    relay.start()
    try:
        yield relay
    finally:
        code = relay.stop()
    assert code == 0, relay.log
    assert relay.count("relay.stopped"), relay.log


async def sync_one_row(url: str, tmp_path: Path, body: str) -> None:
    """Two fresh databases tracking ``notes``: ``a`` writes a row and syncs through the relay at
    ``url``, then ``b`` syncs; assert ``b`` received exactly what ``a`` pushed, and the row.
    Callers bound the time (``trio.fail_after``)."""
    a = crsync.connect(tmp_path / "a.db")
    b = crsync.connect(tmp_path / "b.db")
    try:
        for db in (a, b):
            db.conn.execute(SCHEMA)
            db.track("notes")
        a.conn.execute("INSERT INTO notes VALUES ('n1', ?)", (body,))
        async with Peer(a, url, store="notes") as pa:
            await pa.wait_synced()
        async with Peer(b, url, store="notes") as pb:
            await pb.wait_synced()
        assert pb.stats.received_changes == pa.stats.pushed_changes > 0
        assert b.conn.execute("SELECT id, body FROM notes").fetchall() == [("n1", body)]
    finally:
        a.close()
        b.close()
