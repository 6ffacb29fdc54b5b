"""The relay's disk fills up: clear errors, no acknowledgement of anything unwritten, recovery.

Two honest ways to run out of space, both on a real relay process:

* ``tmpfs``: the data directory is a 4 MiB tmpfs mount filled with a filler file, so SQLite's
  writes fail with ENOSPC (SQLITE_FULL); space returns when the filler is deleted. Needs the
  right to mount (root in a container with CAP_SYS_ADMIN); skipped otherwise.
* ``rlimit``: the relay's RLIMIT_FSIZE is lowered at run time (``prlimit``) to the current size
  of its files, so writes beyond fail with EFBIG (CPython ignores SIGXFSZ); raising the soft limit
  again is the space coming back. Works without privileges on Linux.

A read-only data directory is tested separately: a file system holding open writable files cannot
be remounted read-only, so the relay meets it when it opens a store (chmod would not stop root,
which these tests may run as).
"""

from __future__ import annotations

import contextlib
import resource
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import TODOS, eventually, open_db, rows

from crsync.peer import Peer

from .conftest import RelayFactory, integrity

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@contextlib.contextmanager
def _tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def _fill(mount: Path) -> Path:
    filler = mount / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


@pytest.mark.parametrize("how", ["tmpfs", "rlimit"])
async def test_full_disk_gets_clear_errors_no_false_acks_and_recovers(
    relay_factory: RelayFactory, tmp_path: Path, how: str
) -> None:
    stack = contextlib.ExitStack()
    with stack:
        data_dir = None
        if how == "tmpfs":
            data_dir = stack.enter_context(_tmpfs(tmp_path / "mnt")) / "data"
        relay: RelayProcess = relay_factory(data_dir=data_dir)
        stack.callback(relay.stop)
        token = relay.token("full")
        a, b = open_db(tmp_path / "a.db", TODOS), open_db(tmp_path / "b.db", TODOS)
        opts = {"store": "full", "token": token, "backoff_initial": 0.05, "backoff_max": 0.3}
        with anyio.fail_after(60):
            async with Peer(a, relay.url, **opts) as pa:  # type: ignore[arg-type]
                a.conn.execute("INSERT INTO todos (id, title) VALUES ('before', 'x')")
                await pa.wait_synced()
                store_file = relay.store_path("full")
                assert relay.proc is not None
                mount = relay.data_dir.parent
                if how == "tmpfs":
                    filler = _fill(mount)
                else:
                    size = max(f.stat().st_size for f in relay.data_dir.iterdir())
                    _soft, hard = resource.prlimit(relay.proc.pid, resource.RLIMIT_FSIZE)
                    resource.prlimit(relay.proc.pid, resource.RLIMIT_FSIZE, (size, hard))
                acked_before = pa.push_upto
                with a.conn:  # ~1.5 MB in one transaction: more than the space left
                    a.conn.executemany(
                        "INSERT INTO todos (id, title) VALUES (?, ?)",
                        ((f"big{i}", "y" * 300) for i in range(5000)),
                    )
                pa.notify()
                await eventually(
                    lambda: relay.count("relay.store_write_failed") >= 3,
                    "three refused pushes",
                )
                # nothing was acknowledged, the error is clear, the relay is alive
                assert pa.push_upto == acked_before
                assert pa.stats.last_error is not None
                assert "could not write store 'full'" in pa.stats.last_error, pa.stats.last_error
                assert relay.proc.poll() is None
                assert relay.count("relay.internal_error") == 0
                # space returns
                if how == "tmpfs":
                    filler.unlink()
                else:
                    resource.prlimit(relay.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
                await pa.wait_synced()
            async with Peer(b, relay.url, **opts) as pb:  # type: ignore[arg-type]
                await pb.wait_synced()
        assert rows(a) == rows(b) and len(rows(b)) == 5001
        relay.stop()
        assert integrity(store_file) == "ok"
        print(f"\nDISK_FULL how={how} refused_pushes={relay.count('relay.store_write_failed')}")
        if how == "tmpfs":
            shutil.rmtree(relay.data_dir)


async def test_read_only_data_dir_refuses_with_clear_error_and_recovers(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    with contextlib.ExitStack() as stack:
        mount = stack.enter_context(_tmpfs(tmp_path / "mnt"))
        relay: RelayProcess = relay_factory(data_dir=mount / "data")
        stack.callback(relay.stop)
        _remount(mount, "ro")
        stack.callback(_remount, mount, "rw")
        a, b = open_db(tmp_path / "a.db", TODOS), open_db(tmp_path / "b.db", TODOS)
        a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
        opts = {"store": "ro", "token": relay.token("ro"), "backoff_initial": 0.05}
        with anyio.fail_after(60):
            async with Peer(a, relay.url, backoff_max=0.3, **opts) as pa:  # type: ignore[arg-type]
                await eventually(
                    lambda: relay.count("relay.store_write_failed") >= 2, "refused connections"
                )
                assert pa.push_upto == 0 and pa.stats.connects == 0
                assert pa.stats.last_error is not None
                assert "could not write store 'ro'" in pa.stats.last_error, pa.stats.last_error
                assert relay.proc is not None and relay.proc.poll() is None
                _remount(mount, "rw")
                await pa.wait_synced()
            async with Peer(b, relay.url, **opts) as pb:  # type: ignore[arg-type]
                await pb.wait_synced()
        assert rows(b) == rows(a) == [("1", "x", 0, None)]
        relay.stop()
        assert integrity(relay.store_path("ro")) == "ok"
        shutil.rmtree(relay.data_dir)
