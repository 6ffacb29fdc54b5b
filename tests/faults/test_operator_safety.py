"""The relay host and its operator (security review L6, L7, L8): owner-only files, secret file
modes, backup/restore paths used exactly, one relay per data directory, a bounded metrics
server. Real relay processes and the real ``crsync-relay`` command."""

from __future__ import annotations

import os
import re
import socket
import stat
import time
import urllib.request
from pathlib import Path

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.conftest import relay_cli as _cli
from sync.helpers import open_db

from crsync.peer import Peer

from .conftest import RelayFactory

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def _sync_one_row(relay: RelayProcess, tmp_path: Path, store: str = "s") -> None:
    db = open_db(tmp_path / f"{store}-device.db")
    db.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
    with anyio.fail_after(30):
        async with Peer(db, relay.url, store=store, token=relay.token(store)) as peer:
            await peer.wait_synced()
    db.close()


async def test_data_dir_store_files_and_backups_are_owner_only(
    relay: RelayProcess, tmp_path: Path
) -> None:
    old = os.umask(0o022)  # a typical login shell: files world-readable unless made otherwise
    try:
        await _sync_one_row(relay, tmp_path)
        backup = tmp_path / "s.bak"
        done = _cli(
            "backup", "--data-dir", str(relay.data_dir), "--store", "s", "--to", str(backup)
        )
    finally:
        os.umask(old)
    assert done.returncode == 0, done.stderr
    assert _mode(relay.data_dir) == 0o700
    store = relay.store_path("s")
    assert _mode(store) == 0o600
    for extra in (Path(f"{store}-wal"), Path(f"{store}-shm")):
        if extra.exists():
            assert _mode(extra) == 0o600, extra
    assert _mode(backup) == 0o600


def test_a_secret_file_every_user_can_read_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s" * 48)
    secret.chmod(0o644)
    done = _cli("token", "--store", "alice", "--secret-file", str(secret))
    assert done.returncode != 0
    assert "readable by every user" in done.stderr and f"chmod 600 {secret}" in done.stderr
    served = _cli("serve", "--data-dir", str(tmp_path / "d"), "--secret-file", str(secret))
    assert served.returncode != 0 and "readable by every user" in served.stderr
    secret.chmod(0o600)
    assert _cli("token", "--store", "alice", "--secret-file", str(secret)).returncode == 0


async def test_backup_and_restore_use_paths_exactly(relay: RelayProcess, tmp_path: Path) -> None:
    await _sync_one_row(relay, tmp_path, "bob")
    # A file name with URI syntax in it: '#' and '?' must not change which file is read.
    odd = tmp_path / "b#2024-11-30?x=1%20.bak"
    done = _cli("backup", "--data-dir", str(relay.data_dir), "--store", "bob", "--to", str(odd))
    assert done.returncode == 0, done.stderr
    # A junk file whose name is a prefix of the odd name: the old code checked this one.
    (tmp_path / "b").write_bytes(b"junk, not a database")
    junk = tmp_path / "b#junk.bak"
    junk.write_bytes(b"junk, not a database")
    relay.stop()
    refused = _cli(
        "restore", "--data-dir", str(relay.data_dir), "--store", "bob", "--from", str(junk),
        "--force",
    )
    assert refused.returncode != 0 and "not a relay store backup" in refused.stderr
    assert "Traceback" not in refused.stderr
    restored = _cli(
        "restore", "--data-dir", str(relay.data_dir), "--store", "bob", "--from", str(odd),
        "--force",
    )
    assert restored.returncode == 0, restored.stderr
    relay.start()
    fresh = open_db(tmp_path / "fresh.db")
    with anyio.fail_after(30):
        async with Peer(fresh, relay.url, store="bob", token=relay.token("bob")) as peer:
            await peer.wait_synced()
    assert fresh.conn.execute("SELECT id, title FROM todos").fetchall() == [("1", "x")]


async def test_backup_never_writes_through_a_symbolic_link(
    relay: RelayProcess, tmp_path: Path
) -> None:
    await _sync_one_row(relay, tmp_path)
    target = tmp_path / "elsewhere.txt"
    link = tmp_path / "s.bak"
    link.symlink_to(target)  # dangling
    done = _cli("backup", "--data-dir", str(relay.data_dir), "--store", "s", "--to", str(link))
    assert done.returncode != 0 and "already exists" in done.stderr
    assert not target.exists()


async def test_restore_refuses_while_a_relay_serves_the_data_dir(
    relay: RelayProcess, tmp_path: Path
) -> None:
    await _sync_one_row(relay, tmp_path)
    backup = tmp_path / "s.bak"
    assert (
        _cli("backup", "--data-dir", str(relay.data_dir), "--store", "s", "--to", str(backup))
    ).returncode == 0
    done = _cli(
        "restore", "--data-dir", str(relay.data_dir), "--store", "s", "--from", str(backup),
        "--force",
    )
    assert done.returncode != 0 and "stop it before restoring" in done.stderr


def test_a_second_relay_on_the_same_data_dir_is_refused(relay: RelayProcess) -> None:
    assert relay.secret_file is not None
    done = _cli(
        "serve", "--data-dir", str(relay.data_dir), "--secret-file", str(relay.secret_file),
        "--port", "0",
    )
    assert done.returncode != 0 and "another relay serves" in done.stderr


def test_dev_relay_refuses_metrics_off_loopback(tmp_path: Path) -> None:
    done = _cli(
        "serve", "--dev", "--data-dir", str(tmp_path / "d"), "--metrics-port", "0",
        "--metrics-host", "0.0.0.0",
    )
    assert done.returncode != 0 and "only on loopback" in done.stderr


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0  # pragma: no cover


@pytest.mark.slow
def test_idle_metrics_clients_cost_bounded_threads_and_are_dropped(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory("--metrics-port", "0")
    m = re.search(r"relay\.metrics host=\S+ port=(\d+)", relay.log)
    assert m, relay.log
    port = int(m.group(1))
    assert relay.proc is not None
    before = _threads(relay.proc.pid)
    idle = []
    for _ in range(100):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /metrics HTTP/1.1\r\n")  # a request that never ends
        idle.append(s)
    try:
        deadline = time.monotonic() + 2
        peak = before
        while time.monotonic() < deadline:
            peak = max(peak, _threads(relay.proc.pid))
            time.sleep(0.05)  # sampling the thread count, not waiting for an event
        assert peak - before <= 20, (before, peak)
        # The idle clients are dropped after the request timeout; a scrape then works.
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "metrics never served again"
        for s in idle:
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the relay
    finally:
        for s in idle:
            s.close()
