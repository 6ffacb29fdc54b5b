"""A device whose disk is full (here: a file-size limit on the syncing process) keeps its Peer
alive: the merge fails with an I/O error, the peer says so and retries, and syncs once space is
back. Linux only (``prlimit`` on another process)."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest

from crsync.peer import Peer

from .conftest import RelayProcess
from .helpers import open_db, rows

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.anyio,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prlimit is Linux-only"),
]

CHILD = textwrap.dedent(
    """
    import sys, trio, crsync
    from crsync.peer import Peer, PeerState

    url, token, path = sys.argv[1:4]

    async def main() -> None:
        print("ready", flush=True)
        assert sys.stdin.readline().strip() == "go"
        db = crsync.connect(path)
        async with Peer(db, url, store="full", token=token, backoff_max=0.2) as p:
            said = None
            async with trio.open_nursery() as nursery:
                async def report() -> None:
                    nonlocal said
                    while True:
                        if p.reason != said and p.state is PeerState.OFFLINE:
                            said = p.reason
                            print(f"offline {said}", flush=True)
                        await p.wait_state(*[s for s in PeerState if s is not p.state])
                nursery.start_soon(report)
                await p.wait_synced(timeout=60)
                nursery.cancel_scope.cancel()
            print(f"synced error={p.error} retries={p.stats.retries}", flush=True)
        db.close()

    trio.run(main)
    """
)


async def test_a_full_disk_is_retried_and_the_peer_syncs_when_space_returns(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a = open_db(tmp_path / "a.db")
    with a.conn:
        a.conn.executemany(
            "INSERT INTO todos (id, title, data) VALUES (?, 'big', randomblob(4000))",
            [(f"r{i:03}",) for i in range(300)],
        )
    tok = relay.token("full")
    with anyio.fail_after(60):
        async with Peer(a, relay.url, store="full", token=tok) as pa:
            await pa.wait_synced()
    b_path = tmp_path / "b.db"
    b = open_db(b_path)
    b.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    first, out, code, err = await anyio.to_thread.run_sync(
        _sync_with_a_full_disk, relay.url, tok, b_path
    )
    assert first.startswith("offline local database unavailable (SQLITE_"), first
    assert "IOERR" in first or "FULL" in first, first
    assert code == 0, err
    last = out.strip().splitlines()[-1]
    assert last.startswith("synced error=None retries="), out
    assert int(last.rsplit("=", 1)[1]) >= 1
    assert rows(b) == rows(a)


def _sync_with_a_full_disk(url: str, token: str, b_path: Path) -> tuple[str, str, int, str]:
    """Run the child peer, fill its disk, wait for it to say so, give the space back; return
    (its first report, the rest of its output, its exit status, its stderr)."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url, token, str(b_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdin is not None and child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        sizes = [p.stat().st_size for p in b_path.parent.glob("b.db*")]
        _, hard = resource.prlimit(child.pid, resource.RLIMIT_FSIZE)
        # Room for opening and small writes, not for 1.2 MB of merged rows.
        resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (max(sizes) + 256 * 1024, hard))
        child.stdin.write("go\n")
        child.stdin.flush()
        first = child.stdout.readline()
        resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (hard, hard))  # space is back
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=10)
    return first, out, child.returncode, err
