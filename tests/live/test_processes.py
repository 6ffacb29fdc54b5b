"""Several processes on one device file: one syncer elected, no lock errors for the app."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import anyio
import pytest
from reactor.relay_util import answer_questions, device, relay

from crsync.peer import Peer, PeerState

pytestmark = pytest.mark.anyio

LIMIT = 30.0

HOLDER = """
import sys, trio, crsync
from crsync.peer import Peer, PeerState
async def main():
    db = crsync.connect(sys.argv[1])
    async with Peer(db, "ws://127.0.0.1:9", store="s", backoff_initial=0.05) as p:
        await p.wait_state(PeerState.CONNECTING, PeerState.OFFLINE)
        print("syncer", flush=True)
        await trio.sleep_forever()
trio.run(main)
"""

UI = """
import sys, crsync
db = crsync.connect(sys.argv[1])
for i in range(400):
    if i % 20 == 0:
        db.conn.execute("BEGIN IMMEDIATE")
        for j in range(20):
            db.conn.execute("INSERT INTO requests (id, question) VALUES (?, ?)", (f"t{i}-{j}", "q"))
        db.conn.execute("COMMIT")
    db.conn.execute("INSERT INTO requests (id, question) VALUES (?, ?)", (f"r{i}", "question"))
print("ui done", flush=True)
"""


async def test_one_syncer_per_file_across_processes_and_takeover_when_it_dies(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dev.db"
    db = device(path)
    with anyio.fail_after(LIMIT):
        proc = await anyio.open_process([sys.executable, "-c", HOLDER, str(path)])
        async with proc:
            try:
                assert proc.stdout is not None
                line = b""
                while b"syncer" not in line:
                    line += await proc.stdout.receive()
                async with Peer(db, "ws://127.0.0.1:9", store="s", backoff_initial=0.05) as p:
                    assert await p.wait_state(PeerState.STANDBY) is PeerState.STANDBY
                    proc.kill()  # the lock dies with its process
                    await p.wait_state(PeerState.CONNECTING, PeerState.OFFLINE)
            finally:
                with contextlib.suppress(ProcessLookupError):  # (killed above: reaped)
                    proc.kill()
            # a peer that opts out never waits
            async with Peer(db, "ws://127.0.0.1:9", store="s", sync_lock=False) as p2:
                await p2.wait_state(PeerState.CONNECTING, PeerState.OFFLINE)


# trio only: the relay runs in this test's own event loop (its reactor is a function of the
# test, see tests/reactor/relay_util.py), and the relay is a trio program.
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_ui_process_writes_while_sync_process_merges_without_lock_errors(
    tmp_path: Path,
) -> None:
    path = tmp_path / "dev.db"
    db = device(path)
    other = device(tmp_path / "other.db")
    with anyio.fail_after(LIMIT):
        async with (
            relay(tmp_path / "relay", answer_questions) as (url, _hub),
            Peer(db, url, store="s", backoff_initial=0.05) as p,
            Peer(other, url, store="s", backoff_initial=0.05),
            db.watch("SELECT count(*), count(answer) FROM requests") as live,
        ):
            ui = await anyio.run_process([sys.executable, "-c", UI, str(path)], check=False)
            assert ui.returncode == 0, ui.stderr.decode()
            assert ui.stdout == b"ui done\n"
            async for ((count, answers),) in live:  # every request answered by the relay
                if count == 800 and answers == 800:
                    break
            await p.wait_synced()
    assert other.conn.execute("SELECT count(answer) FROM requests").fetchone() == (800,)
