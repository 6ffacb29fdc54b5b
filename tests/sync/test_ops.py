"""Relay operations: Prometheus metrics and health on their own port, live backup, restore."""

from __future__ import annotations

import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import anyio
import pytest

from crsync.peer import Peer

from .conftest import RelayFactory
from .conftest import relay_cli as _cli
from .helpers import open_db, rows

pytestmark = pytest.mark.anyio


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
        return resp.status, resp.read().decode()


def _metrics_port(log: str) -> int:
    m = re.search(r"relay\.metrics host=\S+ port=(\d+)", log)
    assert m, log
    return int(m.group(1))


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


async def test_metrics_and_health_on_separate_port_count_real_traffic(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory("--metrics-port", "0")
    port = _metrics_port(relay.log)
    status, body = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/healthz")
    assert (status, body) == (200, "ok\n")
    a = open_db(tmp_path / "a.db")
    b = open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x'), ('2', 'y')")
    tok = relay.token("m")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="m", token=tok) as pa:
            await pa.wait_synced()
        async with Peer(b, relay.url, store="m", token=tok) as pb:
            await pb.wait_synced()
    assert rows(b) == rows(a)
    _, text = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
    assert _metric(text, "crsync_relay_changes_merged_total") == 6  # 2 rows x 3 columns
    assert _metric(text, "crsync_relay_changes_sent_total") == 6
    assert _metric(text, "crsync_relay_connections_total") == 2
    assert _metric(text, "crsync_relay_merge_seconds_count") >= 1
    async with Peer(a, relay.url, store="other", token=tok) as bad:
        with anyio.fail_after(30):
            try:
                await bad.wait_synced()
            except Exception:
                pass
    _, text = await anyio.to_thread.run_sync(_get, f"http://127.0.0.1:{port}/metrics")
    assert 'crsync_relay_errors_total{code="forbidden"} 1.0' in text


async def test_live_backup_then_restore_gives_a_complete_store_with_a_new_epoch(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'before backup')")
    tok = relay.token("s")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="s", token=tok) as pa:
            await pa.wait_synced()
            old_epoch = pa.epoch
            backup = tmp_path / "s.bak"
            done = await anyio.to_thread.run_sync(
                lambda: _cli(
                    "backup", "--data-dir", str(relay.data_dir), "--store", "s", "--to", str(backup)
                )
            )
            assert done.returncode == 0, done.stderr
            # written after the backup: the restored store lacks it until the device re-pushes
            a.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'after backup')")
            await pa.wait_synced()
    relay.stop()
    again = _cli(
        "restore", "--data-dir", str(relay.data_dir), "--store", "s", "--from", str(backup)
    )
    assert again.returncode != 0 and "--force" in again.stderr
    done = _cli(
        "restore",
        "--data-dir",
        str(relay.data_dir),
        "--store",
        "s",
        "--from",
        str(backup),
        "--force",
    )
    assert done.returncode == 0, done.stderr
    relay.start()
    fresh = open_db(tmp_path / "fresh.db")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="s", token=tok) as pa:
            await pa.wait_synced()
            assert pa.epoch != old_epoch
        async with Peer(fresh, relay.url, store="s", token=tok) as pf:
            await pf.wait_synced()
    assert [r[:2] for r in rows(fresh)] == [("1", "before backup"), ("2", "after backup")]


def test_backup_of_a_missing_store_fails_with_one_clear_line(tmp_path: Path) -> None:
    done = _cli(
        "backup", "--data-dir", str(tmp_path), "--store", "nope", "--to", str(tmp_path / "x")
    )
    assert done.returncode == 1  # the command could not do its job (not a usage error)
    assert done.stderr.strip() == f"crsync-relay: error: no store 'nope' in {tmp_path}"


async def test_token_command_mints_a_token_the_relay_accepts_and_stores_lists_it(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory()
    assert relay.secret_file is not None
    minted = _cli(
        "token",
        "--store",
        "team-*",
        "--ttl",
        "600",
        "--subject",
        "ci",
        "--secret-file",
        str(relay.secret_file),
    )
    assert minted.returncode == 0, minted.stderr
    tok = minted.stdout.strip()
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
    with anyio.fail_after(30):
        async with Peer(a, relay.url, store="team-blue", token=tok) as pa:
            await pa.wait_synced()
    listed = _cli("stores", "--data-dir", str(relay.data_dir))
    assert listed.returncode == 0, listed.stderr
    line = next(x for x in listed.stdout.splitlines() if x.startswith("team-blue "))
    name, size, cells, peers, head, _when = line.split()
    assert (name, cells, peers, head) == ("team-blue", "3", "1", "1") and int(size) > 0


def test_token_without_a_secret_is_one_clear_line(tmp_path: Path) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    done = subprocess.run(
        [sys.executable, "-m", "crsync_relay.cli", "token", "--store", "s"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crsync-relay: error: no relay secret")
