"""Long-lived stores against a real relay process: a device back after 400 days, and a
bootstrap cut at random points.

Time passes through the relay's injected clock (``CRSYNC_RELAY_CLOCK_SKEW``, seconds added to
its wall clock); bytes on the wire are counted by a loopback proxy between the devices and the
relay (``tests/faults/proxy.py``), which also cuts connections mid-frame.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from crsync_relay.process import RelayLauncher
from faults.proxy import FaultProxy
from sync.helpers import FAST, converge, eventually

import crsync
from crsync.peer import Peer

STORE = "longlived"
DAY = 86_400
DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, title TEXT, n INTEGER)"


def _device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(DDL)
    db.track("items", integer_keys="app-assigned")
    return db


def _rows(db: crsync.Database) -> list[tuple[object, ...]]:
    return db.conn.execute("SELECT * FROM items ORDER BY id").fetchall()


def _relay_cli(data_dir: Path, skew: float, *args: str) -> str:
    env = {"CRSYNC_RELAY_CLOCK_SKEW": str(skew)}
    import os

    out = subprocess.run(
        [sys.executable, "-m", "crsync_relay.cli", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr + out.stdout
    return out.stdout


@asynccontextmanager
async def _proxied(relay: RelayLauncher, seed: int = 0) -> AsyncIterator[FaultProxy]:
    proxy = FaultProxy(lambda: relay.port, random.Random(seed))
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.serve)
        yield proxy
        tg.cancel_scope.cancel()


async def _sync_once(db: crsync.Database, url: str) -> None:
    async with Peer(db, url, store=STORE, **FAST) as p:
        await p.wait_synced()


async def _one_big_unit(relay: RelayLauncher, writer: crsync.Database, scratch: Path) -> int:
    """Write 60,000 rows in one transaction (one relay version, served in many parts), sync
    them to the relay, and return the bytes an uncut bootstrap of them takes."""
    with writer.conn:
        writer.conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?)",
            ((i, f"item {i:08d} " + "x" * 40, i) for i in range(60_000)),
        )
    await _sync_once(writer, f"ws://127.0.0.1:{relay.port}")
    reference = _device(scratch)
    try:
        async with _proxied(relay) as proxy:
            await _sync_once(reference, proxy.url)
            return proxy.stats.bytes_down
    finally:
        reference.close()


@pytest.mark.slow
async def test_a_device_back_after_400_days_converges_and_transfers_under_5_percent(
    tmp_path: Path,
) -> None:
    data = tmp_path / "relay"
    relay = RelayLauncher(data, args=("--gc-interval", "3600"))
    relay.env["CRSYNC_RELAY_CLOCK_SKEW"] = "0"
    writer, returning = _device(tmp_path / "w.db"), _device(tmp_path / "r.db")
    relay.start()
    try:
        with writer.conn:
            writer.conn.executemany(
                "INSERT INTO items VALUES (?, ?, ?)",
                ((i, f"item {i}", i % 97) for i in range(100_000)),
            )
        await _sync_once(writer, f"ws://127.0.0.1:{relay.port}")
        async with _proxied(relay) as proxy:
            await _sync_once(returning, proxy.url)
            full = proxy.stats.bytes_down + proxy.stats.bytes_up
        assert _rows(returning) == _rows(writer)

        # The returning device goes away for 400 days. Meanwhile 1% of the store changes:
        # updates, deletes (some of rows it edits offline), and deleted keys reused.
        rnd = random.Random(14)
        changed = rnd.sample(range(100_000), 1_000)
        with writer.conn:
            for k in changed[:500]:
                writer.conn.execute("UPDATE items SET n = -n - 1 WHERE id = ?", (k,))
            for k in changed[500:]:
                writer.conn.execute("DELETE FROM items WHERE id = ?", (k,))
            for k in changed[900:950]:  # key reuse: deleted, then a new row under the key
                writer.conn.execute("INSERT INTO items VALUES (?, 'reborn', 0)", (k,))
        edited_offline = changed[600:620]  # deleted by the writer: the delete wins
        with returning.conn:
            for k in edited_offline:
                returning.conn.execute("UPDATE items SET title = 'offline' WHERE id = ?", (k,))
            for k in range(200_000, 200_010):  # created offline: kept and pushed
                returning.conn.execute("INSERT INTO items VALUES (?, 'new offline', 1)", (k,))
        await _sync_once(writer, f"ws://127.0.0.1:{relay.port}")
        relay.stop()

        # 400 days later: the writer keeps syncing, the returning device has not been seen
        # for longer than max_offline (180 days): collection leaves it out of the horizon.
        relay.env["CRSYNC_RELAY_CLOCK_SKEW"] = str(400 * DAY)
        relay.start()
        await _sync_once(writer, f"ws://127.0.0.1:{relay.port}")
        relay.stop()
        report = _relay_cli(data, 400 * DAY, "gc", "--store", STORE)
        assert "departed" in report, report
        relay.start()

        async with _proxied(relay) as proxy:
            await _sync_once(returning, proxy.url)
            back = proxy.stats.bytes_down + proxy.stats.bytes_up
        await _sync_once(writer, f"ws://127.0.0.1:{relay.port}")
        url = f"ws://127.0.0.1:{relay.port}"
        async with (
            Peer(returning, url, store=STORE, **FAST) as a,
            Peer(writer, url, store=STORE, **FAST) as b,
        ):
            await converge([a, b])
        assert _rows(returning) == _rows(writer)
        present = {r[0] for r in _rows(writer)}
        assert present.isdisjoint(edited_offline), "an edit made offline resurrected a delete"
        assert set(range(200_000, 200_010)) <= present, "rows created offline were lost"
        assert back < 0.05 * full, f"returning transferred {back} bytes, full bootstrap {full}"
    finally:
        relay.stop()
        writer.close()
        returning.close()


@pytest.mark.slow
async def test_a_bootstrap_cut_at_random_points_resumes_without_starting_over(
    tmp_path: Path,
) -> None:
    data = tmp_path / "relay"
    relay = RelayLauncher(data)
    writer, fresh = _device(tmp_path / "w.db"), _device(tmp_path / "f.db")
    relay.start()
    try:
        full = await _one_big_unit(relay, writer, tmp_path / "ref.db")

        rnd = random.Random(7)
        progress: list[tuple[int, int]] = []
        async with (
            _proxied(relay, seed=7) as proxy,
            Peer(
                fresh,
                proxy.url,
                store=STORE,
                on_progress=lambda done, total: progress.append((done, total)),
                **FAST,
            ) as peer,
        ):
            cuts = sorted(rnd.uniform(0.1, 0.9) * full for _ in range(4))
            for at in cuts:
                await eventually(
                    lambda at=at: proxy.stats.bytes_down >= at, f"{at:.0f} bytes down", 60
                )
                proxy.set_fault("drop")
                proxy.set_fault("none")
            await peer.wait_synced()
        assert _rows(fresh) == _rows(writer)
        assert proxy.stats.resets >= 4
        # Each cut loses at most the part in flight: far from four restarts.
        assert proxy.stats.bytes_down < 1.25 * full, (proxy.stats.bytes_down, full)
        assert progress and progress[-1][0] == progress[-1][1] >= 120_000  # two cells a row
    finally:
        relay.stop()
        writer.close()
        fresh.close()


def _staged_parts(path: Path) -> int:
    """Parts of a catch-up unit the device holds (read from another connection)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute("SELECT count(*) FROM crsync_staged").fetchone()[0])
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


@pytest.mark.slow
async def test_a_device_process_killed_mid_bootstrap_resumes_where_it_stopped(
    tmp_path: Path,
) -> None:
    """``kill -9`` of a device process (the ``crsync sync`` command) while it receives a big
    unit: the next run continues from the parts already on disk."""
    relay = RelayLauncher(tmp_path / "relay")
    writer = _device(tmp_path / "w.db")
    fresh_path = tmp_path / "f.db"
    _device(fresh_path).close()
    relay.start()
    try:
        full = await _one_big_unit(relay, writer, tmp_path / "ref.db")
        async with _proxied(relay) as proxy:
            cmd = [sys.executable, "-m", "crsync", "sync", str(fresh_path), "--url", proxy.url]
            cmd += ["--store", STORE, "--timeout", "60"]
            for parts in (3, 8):  # killed twice, once it holds this many parts
                child = await anyio.open_process(cmd)
                await eventually(
                    lambda child=child, parts=parts: (
                        child.returncode is None and _staged_parts(fresh_path) >= parts
                    ),
                    f"{parts} parts staged",
                    60,
                )
                assert child.returncode is None, "the sync ended before it was killed"
                child.kill()
                await child.wait()
            finish = await anyio.to_thread.run_sync(
                lambda: subprocess.run(cmd, capture_output=True, text=True, timeout=90)
            )
            assert finish.returncode == 0, finish.stderr
            total = proxy.stats.bytes_down
        fresh = crsync.connect(fresh_path)
        try:
            assert _rows(fresh) == _rows(writer)
            assert _staged_parts(fresh_path) == 0
        finally:
            fresh.close()
        # Each run continued from the parts on disk: the three runs together received little
        # more than one bootstrap (starting over would add the 8 parts of 24 already kept).
        assert total < 1.2 * full, (total, full)
    finally:
        relay.stop()
        writer.close()
