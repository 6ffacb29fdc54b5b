"""A Peer and live queries in a plain asyncio program: ``asyncio.run`` in a fresh interpreter,
no pytest plugin, no trio imported, two devices syncing through a real relay process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import RelayProcess
from .helpers import open_db

pytestmark = pytest.mark.e2e

DEVICES = """
import asyncio, sys
import crsync
from crsync.peer import Peer

url, token, path_a, path_b = sys.argv[1:5]


async def main() -> None:
    a, b = crsync.connect(path_a), crsync.connect(path_b)
    async with asyncio.timeout(60):
        async with (
            Peer(a, url, store="s", token=token, backoff_max=0.5) as pa,
            Peer(b, url, store="s", token=token, backoff_max=0.5) as pb,
            b.watch("SELECT title FROM todos ORDER BY id") as live,
            b.changes_feed(["todos"]) as feed,
        ):
            assert await anext(live) == []
            a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'from a')")
            async for titles in live:  # the merge on b shows in b's live query
                if titles == [("from a",)]:
                    break
            (change,) = await anext(feed)
            assert (change.table, change.pk, change.local) == ("todos", ("1",), False)
            b.conn.execute("UPDATE todos SET done = 1 WHERE id = '1'")
            await pb.wait_synced()
            await pa.wait_synced()
            print("a", a.conn.execute("SELECT id, title, done FROM todos").fetchall())
    # asyncio's own cancellation (a timeout) while a Peer waits: it lets go of the file
    try:
        async with asyncio.timeout(0.3):
            async with Peer(a, "ws://127.0.0.1:9", store="s", backoff_max=0.1) as p:
                await p.wait_synced()
    except TimeoutError:
        print("cancelled", p.state.value)
    print("trio imported:", "trio" in sys.modules)


asyncio.run(main())
"""


def test_two_devices_sync_with_a_live_query_under_plain_asyncio_run(
    relay: RelayProcess, tmp_path: Path
) -> None:
    for name in ("a.db", "b.db"):
        open_db(tmp_path / name).close()
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            DEVICES,
            relay.url,
            relay.token("s"),
            str(tmp_path / "a.db"),
            str(tmp_path / "b.db"),
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines() == [
        "a [('1', 'from a', 1)]",
        "cancelled stopped",
        "trio imported: False",
    ], proc.stderr


def test_one_peer_object_runs_under_trio_then_asyncio_then_trio(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """A Peer is bound to an event loop only inside ``async with``: the same object syncs in
    consecutive runs of either loop."""
    import anyio

    from crsync.peer import Peer

    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    token = relay.token("s")
    pa = Peer(a, relay.url, store="s", token=token, backoff_max=0.5)
    pb = Peer(b, relay.url, store="s", token=token, backoff_max=0.5)

    async def round_trip(n: int) -> None:
        with anyio.fail_after(30):
            a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'x')", (str(n),))
            async with pa, pb:
                await pa.wait_synced()
                await pb.wait_synced()

    for n, backend in enumerate(("trio", "asyncio", "trio")):
        anyio.run(round_trip, n, backend=backend)
        assert b.conn.execute("SELECT count(*) FROM todos").fetchone() == (n + 1,), backend
    assert pa.stats.connects == 3
