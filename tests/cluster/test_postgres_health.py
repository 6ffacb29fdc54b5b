"""Health and metrics of relay nodes on PostgreSQL, through a PostgreSQL restart."""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import trio
from store.pg_server import PrivatePostgres
from sync.helpers import eventually, open_db, rows, snapshot

from .conftest import NodeFactory
from .test_postgres_relay import peers

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # loopback only
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _metrics_port(log: str) -> int:
    m = re.search(r"relay\.metrics host=\S+ port=(\d+)", log)
    assert m, log
    return int(m.group(1))


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{name}{re.escape(labels)} (\S+)$", text, re.M)
    assert m, f"{name}{labels} not in metrics:\n{text}"
    return float(m.group(1))


async def test_healthz_reports_the_database_and_nodes_and_devices_recover_from_its_restart(
    nodes: NodeFactory, pg_server: PrivatePostgres, tmp_path: Path
) -> None:
    node1 = nodes("--metrics-port", "0")
    node2 = nodes("--metrics-port", "0")
    health1 = f"http://127.0.0.1:{_metrics_port(node1.log)}/healthz"
    metrics2 = f"http://127.0.0.1:{_metrics_port(node2.log)}/metrics"
    assert await trio.to_thread.run_sync(_get, health1) == (200, "ok\n")
    ws_health2 = f"http://127.0.0.1:{node2.port}/healthz"  # what a load balancer probes
    assert await trio.to_thread.run_sync(_get, ws_health2) == (200, "ok\n")
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    with trio.fail_after(90):
        async with peers(node1.url, "h", a) as (pa,), peers(node2.url, "h", b) as (pb,):
            a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'before')")
            await pa.wait_synced()
            await eventually(lambda: len(rows(b)) == 1, "A's write to reach B")
            _, text = await trio.to_thread.run_sync(_get, metrics2)
            assert _metric(text, "crsync_relay_notifications_total") >= 1
            assert _metric(text, "crsync_relay_connections_active") == 1
            assert _metric(text, "crsync_relay_database_up") in (0, 1)  # present
            b.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'from B')")
            await pb.wait_synced()
            _, text = await trio.to_thread.run_sync(_get, metrics2)
            assert _metric(text, "crsync_relay_db_seconds_count", '{op="merge"}') >= 1

            await trio.to_thread.run_sync(pg_server.stop)
            try:
                status, body = await trio.to_thread.run_sync(_get, health1)
                assert (status, body) == (503, "unavailable\n")
                await eventually(
                    lambda: _get(ws_health2) == (503, "database unavailable\n"),
                    "node 2's WebSocket port to report the database down",
                )
                a.conn.execute("INSERT INTO todos (id, title) VALUES ('3', 'while down')")
            finally:
                pg_server.start()  # main thread: see PrivatePostgres.start (blocks briefly)
            await eventually(
                lambda: _get(health1) == (200, "ok\n"), "node 1 to be healthy again", 30
            )
            await eventually(lambda: _get(ws_health2) == (200, "ok\n"), "node 2 healthy", 30)
            # devices push what they wrote meanwhile; nodes hear each other again
            await eventually(lambda: len(rows(b)) == 3, "A's write during the outage", 60)
            b.conn.execute("INSERT INTO todos (id, title) VALUES ('4', 'after')")
            await eventually(lambda: len(rows(a)) == 4, "B's write after the restart", 60)
    assert snapshot(a) == snapshot(b)
    node1.wait_for(r"relay\.listening_heads", count=2, timeout=30)  # LISTEN made again


async def test_a_node_reads_each_remote_batch_once_for_all_its_sessions(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node1 = nodes()
    node2 = nodes("--metrics-port", "0")
    metrics2 = f"http://127.0.0.1:{_metrics_port(node2.log)}/metrics"
    a = open_db(tmp_path / "a.db")
    bs = [open_db(tmp_path / f"b{i}.db") for i in range(3)]

    async def figures() -> tuple[float, float]:
        _, text = await trio.to_thread.run_sync(_get, metrics2)
        fan = re.search(r'^crsync_relay_db_seconds_count\{op="fanout_read"\} (\S+)$', text, re.M)
        store = re.search(r'^crsync_relay_reads_total\{source="store"\} (\S+)$', text, re.M)
        return (float(fan.group(1)) if fan else 0.0, float(store.group(1)) if store else 0.0)

    with trio.fail_after(60):
        async with peers(node1.url, "once", a) as (pa,), peers(node2.url, "once", *bs) as pbs:
            a.conn.execute("INSERT INTO todos (id) VALUES ('0')")
            await pa.wait_synced()
            for i, b in enumerate(bs):
                await eventually(lambda b=b: len(rows(b)) == 1, f"first write on device {i}")
            fan0, store0 = await figures()
            for k in range(1, 4):
                a.conn.execute("INSERT INTO todos (id) VALUES (?)", (str(k),))
                await pa.wait_synced()
                for b in bs:
                    await eventually(lambda b=b, k=k: len(rows(b)) == k + 1, f"write {k}")
            fan1, store1 = await figures()
            assert all(p.stats.connects == 1 for p in [pa, *pbs])
    # three batches from node 1: three reads by node 2, none by its three sessions
    assert fan1 - fan0 == 3
    assert store1 == store0
