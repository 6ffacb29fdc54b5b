"""Platforms: the Peer's sync lock is portable (``filelock``), and the library works without
``fcntl`` (as on Windows), simulated here by running Python with ``fcntl`` unimportable."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import filelock
import pytest

from crsync._sync_lock import SyncLock

from .conftest import RelayProcess
from .helpers import open_db, rows

pytestmark = pytest.mark.e2e

# Run before anything else in a child interpreter: `import fcntl` fails as it does on Windows.
NO_FCNTL = "import sys; sys.modules['fcntl'] = None\n"


def _python(code: str, *args: str, no_fcntl: bool) -> subprocess.Popen[str]:
    prelude = NO_FCNTL if no_fcntl else ""
    return subprocess.Popen(
        [sys.executable, "-c", prelude + textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run(code: str, *args: str, no_fcntl: bool) -> str:
    proc = _python(code, *args, no_fcntl=no_fcntl)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


HOLD = """
    import sys, time
    from crsync._sync_lock import SyncLock
    lock = SyncLock(sys.argv[1])
    assert lock.try_acquire()
    print("held", flush=True)
    time.sleep(60)
"""

PROBE = """
    import sys
    from crsync._sync_lock import SyncLock, backend
    a, b = SyncLock(sys.argv[1]), SyncLock(sys.argv[1])
    first = a.try_acquire()
    print(backend(), first, b.try_acquire() if first else None)
"""


@pytest.mark.parametrize("no_fcntl", [False, True], ids=["posix", "no-fcntl"])
def test_the_sync_lock_excludes_within_a_process_and_dies_with_its_holder(
    tmp_path: Path, no_fcntl: bool
) -> None:
    path = str(tmp_path / "app.db.crsync-sync.lock")
    # Two locks on one path in one process exclude each other (two Peers in one app).
    backend, first, second = _run(PROBE, path, no_fcntl=no_fcntl).split()
    assert (first, second) == ("True", "False")
    assert backend == ("SoftFileLock" if no_fcntl else "UnixFileLock")
    # Held by another process: excluded; that process killed: free again.
    holder = _python(HOLD, path, no_fcntl=no_fcntl)
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        assert _run(PROBE, path, no_fcntl=no_fcntl).split()[1] == "False"
        if not no_fcntl:
            assert not SyncLock(path).try_acquire()
    finally:
        holder.kill()
        holder.communicate(timeout=30)
    if no_fcntl and _version(filelock.__version__) < (4, 3):
        return  # older soft locks are not taken over when their owner dies
    assert _run(PROBE, path, no_fcntl=no_fcntl).split()[1:] == ["True", "False"]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(".")[:2] if x.isdigit())


def test_a_peer_syncs_without_fcntl(relay: RelayProcess, tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'from a windows-like box')")
    a.close()
    b = open_db(tmp_path / "b.db")
    code = """
        import sys
        import trio
        import crsync
        from crsync.peer import Peer, PeerState

        assert sys.modules["fcntl"] is None  # nothing imported it behind our back
        url, token, path = sys.argv[1:4]

        async def main() -> None:
            db = crsync.connect(path)
            with trio.fail_after(30):
                async with Peer(db, url, store="w", token=token, backoff_max=0.5) as p:
                    await p.wait_synced()
                    # a second Peer on the file in the same process waits its turn
                    async with Peer(db, url, store="w", token=token) as q:
                        assert await q.wait_state(PeerState.STANDBY) is PeerState.STANDBY
                        print(q.reason)
            db.close()

        trio.run(main)
    """
    tok = relay.token("w")
    out = _run(code, relay.url, tok, str(tmp_path / "a.db"), no_fcntl=True)
    assert "a.db.crsync-sync.lock" in out
    b_peer = """
        import sys, trio, crsync
        from crsync.peer import Peer
        async def main() -> None:
            db = crsync.connect(sys.argv[3])
            async with Peer(db, sys.argv[1], store="w", token=sys.argv[2]) as p:
                await p.wait_synced(timeout=30)
            db.close()
        trio.run(main)
    """
    _run(b_peer, relay.url, tok, str(tmp_path / "b.db"), no_fcntl=True)
    assert [r[:2] for r in rows(b)] == [("1", "from a windows-like box")]
