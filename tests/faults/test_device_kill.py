"""A device process killed (SIGKILL) in the middle of merging a large batch stays consistent.

A source device writes one large transaction (one unit: the relay sends it as many ``changes``
frames with ``more``, merged by the receiver in one SQLite transaction). A receiving device runs in
its own process and is killed at different points: while the frames arrive, while the merge
transaction runs, while its pages are written to the WAL at commit. After each kill its file
must pass ``PRAGMA integrity_check`` and hold all of the batch or none of it, with the metadata
agreeing with the table and the pull cursor recorded only with the batch; a new Peer on the file
then resumes and converges.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import TODOS, open_db, snapshot

from crsync.peer import Peer

from .conftest import integrity

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

LOG = "CREATE TABLE IF NOT EXISTS log (id TEXT PRIMARY KEY NOT NULL, dev TEXT, n INTEGER)"
ROWS = 20_000
# The killed device runs its Peer on the test's event loop (asyncio or trio).
CHILD = """
import sys, anyio, crsync
from crsync.peer import Peer
path, url, store, token, backend = sys.argv[1:6]
async def main():
    db = crsync.connect(path)
    async with Peer(db, url, store=store, token=token, watch_files=False) as peer:
        await peer.wait_synced()
        print("synced", flush=True)
        await anyio.sleep_forever()
anyio.run(main, backend=backend)
"""


def _state(path: Path) -> tuple[int, int, int, int | None]:
    """(rows, live metadata rows, cells with a clock, pull cursor) of a device file."""
    conn = sqlite3.connect(path)
    try:
        n = conn.execute("SELECT count(*) FROM log").fetchone()[0]
        meta = conn.execute("SELECT count(*) FROM log__crsync WHERE cl % 2 = 1").fetchone()[0]
        cells = conn.execute("SELECT count(*) FROM log__crsync WHERE v0 IS NOT NULL").fetchone()[0]
        pull = conn.execute("SELECT version FROM crsync_peers WHERE event = 'pull'").fetchone()
    finally:
        conn.close()
    return n, meta, cells, None if pull is None else pull[0]


def _kill_when(proc: subprocess.Popen[str], wal: Path, how: tuple[str, float]) -> str:
    """SIGKILL the child at a point of its work; returns what it was doing (blocking)."""
    kind, arg = how
    start = time.monotonic()
    if kind == "synced":
        assert proc.stdout is not None
        line = proc.stdout.readline()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"synced wal={wal.stat().st_size}" if line else "child died"
    while proc.poll() is None and time.monotonic() - start < 60:
        size = wal.stat().st_size if wal.exists() else 0
        if (kind == "wal" and size >= arg) or (kind == "after" and time.monotonic() - start >= arg):
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return f"{kind}={arg} wal={size}"
        time.sleep(0.0005)  # fault trigger polls the file the merge writes
    proc.kill()
    proc.wait()
    raise AssertionError(f"child ended before the kill point {how}: {proc.returncode}")


# "synced": right after the merge committed (measures the WAL a whole merge writes, W);
# "after": some time into the connection (frames arriving); "wal": once the WAL holds that
# fraction of W, i.e. while the merge's pages are being written.
KILL_POINTS = [("synced", 0.0), ("after", 0.5), ("wal", 0.05), ("wal", 0.5), ("wal", 0.95)]


@pytest.mark.slow
async def test_device_killed_mid_merge_keeps_batch_all_or_nothing_and_resumes(
    relay: RelayProcess, tmp_path: Path, anyio_backend: str
) -> None:
    token = relay.token("big")
    src = open_db(tmp_path / "src.db", TODOS, LOG)
    with src.conn:  # one transaction: one unit on the relay
        src.conn.executemany(
            "INSERT INTO log VALUES (?, 'src', ?)",
            ((f"r{i:06d}-{'x' * 40}", i) for i in range(ROWS)),
        )
    with anyio.fail_after(120):
        async with Peer(src, relay.url, store="big", token=token) as p:
            await p.wait_synced()
        outcomes = []
        whole = 0
        for i, (kind, arg) in enumerate(KILL_POINTS):
            how = (kind, int(arg * whole) if kind == "wal" else arg)
            path = tmp_path / f"victim{i}.db"
            open_db(path, TODOS, LOG).close()
            proc = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block
                [sys.executable, "-c", CHILD, str(path), relay.url, "big", token, anyio_backend],
                stdout=subprocess.PIPE,
                text=True,
            )
            what = await anyio.to_thread.run_sync(_kill_when, proc, Path(str(path) + "-wal"), how)
            if kind == "synced":
                whole = int(what.split("wal=")[1])
            assert integrity(path) == "ok"
            n, meta, cells, pull = _state(path)
            assert n in (0, ROWS), f"partial batch after kill ({what}): {n} rows"
            assert meta == n and cells == n, (n, meta, cells)
            assert (pull or 0) == (0 if n == 0 else pull) and (n == 0) == (not pull)
            outcomes.append((what, n))
            victim = open_db(path, TODOS, LOG)
            async with Peer(victim, relay.url, store="big", token=token) as peer:
                await peer.wait_synced()
            assert snapshot(victim) == snapshot(src)
            victim.close()
    print(f"\nDEVICE_KILL outcomes={outcomes}")
    # the reference run merged everything; the kills at partial WAL sizes were mid-merge
    assert outcomes[0][1] == ROWS and all(n == 0 for _w, n in outcomes[2:])
