"""Stores that live for years: what collecting tombstones saves, what it leaves, what a device
back after a long absence transfers, and what resuming a cut bootstrap costs (issue #14).

    python bench/gc.py            # 100k rows (about a minute)
    python bench/gc.py --quick    # 10k rows, a smoke test

Writes the figures to ``bench/RESULTS-gc.md`` (or ``--output``):

1. Metadata bytes per cell and per tombstone, on a device and on the relay, for a store of N
   rows (4 replicated columns) of which 50% were deleted, before and after collection
   (SQLite's ``dbstat`` over crsync's tables and indexes, after ``VACUUM``).
2. Tombstones left after a collection while one device lags: only those younger than the
   horizon may stay.
3. A device back after 400 days (the relay's clock skewed) to a store where 1% of the rows
   changed: bytes on the wire against a full bootstrap (a counting proxy on loopback).
4. A bootstrap of one big unit cut four times: bytes and time against an uncut one.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio
from crsync_relay.process import RelayLauncher
from crsync_relay.store import RelayStore

import crsync
from crsync import positions
from crsync.peer import Peer
from crsync.protocol import TableSchema

DAY = 86_400.0
DDL = "CREATE TABLE items (id INTEGER PRIMARY KEY, t TEXT, r REAL, n INTEGER, b BLOB)"
SCHEMA = {"items": TableSchema(("id",), ("b", "n", "r", "t"))}
KEY = "bench"


def device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(DDL)
    db.track("items", integer_keys="app-assigned")
    return db


def fill(db: crsync.Database, rows: int, start: int = 0) -> None:
    with db.conn:
        db.conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
            ((i, f"title {i}", i * 0.25, i % 97, b"blob") for i in range(start, start + rows)),
        )


def dbstat(conn: sqlite3.Connection, names: list[str]) -> int:
    """Bytes of the named tables and indexes (their pages, after VACUUM)."""
    marks = ",".join("?" * len(names))
    row = conn.execute(
        f"SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN ({marks})", names
    ).fetchone()
    return int(row[0])


def device_meta_bytes(db: crsync.Database) -> int:
    db.conn.execute("VACUUM")
    return dbstat(db.conn, ["items__crsync", *_indexes(db.conn, "items__crsync")])


def relay_bytes(store: RelayStore) -> tuple[int, int]:
    """(bytes of the cells, bytes of the collected tombstones), tables and indexes."""
    store.conn.execute("VACUUM")
    cells = dbstat(store.conn, ["relay_cells", *_indexes(store.conn, "relay_cells")])
    graves = dbstat(store.conn, ["relay_graves", *_indexes(store.conn, "relay_graves")])
    return cells, graves


def _indexes(conn: sqlite3.Connection, table: str) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        )
    ]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def push(db: crsync.Database, store: RelayStore, state: dict[str, int]) -> None:
    upto, changes = db.changes_since(state["push"])
    own = [c for c in changes if c.site_id == db.site_id]
    store.merge_push(db.site_id, upto, own)
    positions.record(db, KEY, positions.PUSH, store.epoch, upto)
    state["push"] = upto


def pull(db: crsync.Database, store: RelayStore, state: dict[str, int]) -> None:
    while True:
        page = store.read_page(state["pull"], db.site_id, 20_000, 64 << 20, split=False)
        if page.upto > state["pull"]:
            positions.merge_and_record(db, page.changes, KEY, store.epoch, page.upto)
            state["pull"] = page.upto
            store.record_received(db.site_id, page.upto)
        if page.complete:
            return


# ---------------------------------------------------------------------------- 1 and 2


def sizes(work: Path, rows: int) -> dict[str, Any]:
    clock = Clock()
    store = RelayStore(work / "sizes.store.sqlite3", clock=clock)
    assert store.check_schema(dict(SCHEMA)) is None
    a, b = device(work / "a.db"), device(work / "b.db")
    sa, sb = {"push": 0, "pull": 0}, {"push": 0, "pull": 0}
    fill(a, rows)
    push(a, store, sa)
    pull(b, store, sb)
    cells = rows * 4
    live_dev = device_meta_bytes(b)
    live_relay, _ = relay_bytes(store)
    # Delete half the rows in two rounds; b pulls after the first round only: it lags.
    ids = list(range(rows))
    random.Random(14).shuffle(ids)
    half = rows // 2
    for part in (ids[: half // 2], ids[half // 2 : half]):
        with a.conn:
            a.conn.executemany("DELETE FROM items WHERE id = ?", ((i,) for i in part))
        push(a, store, sa)
        pull(a, store, sa)
        if part is ids[: half // 2]:
            pull(b, store, sb)
    deleted = half
    live_rows = rows - deleted
    # Before collection: b holds the first round's tombstones, a both rounds'.
    pull(b, store, sb)
    dev_before = device_meta_bytes(b)
    relay_before, _ = relay_bytes(store)
    per_live_dev = live_dev / rows
    per_live_relay = live_relay / rows

    # A collection while b lags (its received position is the first round's head): only
    # tombstones younger than the horizon stay.
    lag = store.head
    store.conn.execute(
        "UPDATE relay_peers SET received_upto = ? WHERE site_id = ?", (lag - 1, b.site_id)
    )
    got = store.collect()
    younger = store.conn.execute(
        "SELECT count(*) FROM relay_cells WHERE cid = '-1' AND cl % 2 = 0 AND version > ?",
        (got.horizon,),
    ).fetchone()[0]
    left = store.gc_stats().tombstones
    # Everyone caught up: collect again; devices compact below the horizon they learn
    # (the first round records positions and sets the device's mark, the next passes it).
    store.record_received(b.site_id, store.head)
    store.record_received(a.site_id, store.head)
    final = store.collect()
    for db, st in ((a, sa), (b, sb)):
        for _ in range(3):
            pull(db, store, st)
            positions.apply_horizon(db, KEY, store.horizon())
            push(db, store, st)
            store.record_received(db.site_id, store.head)
            store.collect()
    dev_after = device_meta_bytes(b)
    relay_cells_after, relay_graves_after = relay_bytes(store)
    stats = b.metadata_stats()
    out = {
        "rows": rows,
        "cells": cells,
        "deleted": deleted,
        "dev_bytes_per_cell": live_dev / cells,
        "relay_bytes_per_cell": live_relay / cells,
        "dev_per_tombstone_before": (dev_before - per_live_dev * live_rows) / deleted,
        "dev_per_tombstone_after": (dev_after - per_live_dev * live_rows) / deleted,
        "relay_per_tombstone_before": (relay_before - per_live_relay * live_rows) / deleted,
        "relay_per_tombstone_after": (
            relay_cells_after + relay_graves_after - per_live_relay * live_rows
        )
        / deleted,
        "dev_total_before": dev_before,
        "dev_total_after": dev_after,
        "relay_total_before": relay_before,
        "relay_total_after": relay_cells_after + relay_graves_after,
        "lag_horizon": got.horizon,
        "lag_left": left,
        "lag_younger": younger,
        "lag_collected": got.collected,
        "final_left": store.gc_stats().tombstones,
        "final_collected": final.collected,
        "dev_tombstones_left": stats.tombstones,
        "dev_collected": stats.collected,
    }
    for db in (a, b):
        db.close()
    store.close()
    return out


# ---------------------------------------------------------------------------- 3 and 4


class CountingProxy:
    """Loopback TCP forwarder counting the bytes each way; ``cut()`` resets every link."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.down = 0
        self.up = 0
        self._links: set[trio.CancelScope] = set()
        self._waiters: list[tuple[int, trio.Event]] = []

    async def wait_down(self, nbytes: int) -> None:
        """Return once ``nbytes`` went relay -> device."""
        if self.down < nbytes:
            event = trio.Event()
            self._waiters.append((nbytes, event))
            await event.wait()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> None:
        for scope in list(self._links):
            scope.cancel()

    async def _handle(self, client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", self.target)
        with trio.CancelScope() as scope:
            self._links.add(scope)
            try:
                async with trio.open_nursery() as n:
                    n.start_soon(self._pump, client, server, True, scope)
                    n.start_soon(self._pump, server, client, False, scope)
            finally:
                self._links.discard(scope)
        for s in (client, server):
            await trio.aclose_forcefully(s)

    async def _pump(
        self, src: trio.SocketStream, dst: trio.SocketStream, up: bool, scope: trio.CancelScope
    ) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
                if up:
                    self.up += len(data)
                else:
                    self.down += len(data)
                    for w in [w for w in self._waiters if w[0] <= self.down]:
                        self._waiters.remove(w)
                        w[1].set()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        scope.cancel()


@contextmanager
def relay_at(data: Path, skew: float) -> Iterator[RelayLauncher]:
    relay = RelayLauncher(data)
    relay.env["CRSYNC_RELAY_CLOCK_SKEW"] = str(skew)
    relay.start()
    try:
        yield relay
    finally:
        relay.stop()


async def sync_once(db: crsync.Database, url: str, store: str) -> None:
    async with Peer(db, url, store=store, watch_files=False) as p:
        with trio.fail_after(600):
            await p.wait_synced()


async def through_proxy(relay: RelayLauncher, db: crsync.Database, store: str) -> int:
    proxy = CountingProxy(relay.port)
    async with trio.open_nursery() as n:
        await n.start(proxy.serve)
        await sync_once(db, proxy.url, store)
        n.cancel_scope.cancel()
    return proxy.up + proxy.down


async def returning(work: Path, rows: int) -> dict[str, Any]:
    data = work / "relay-ret"
    w, r = device(work / "ret-w.db"), device(work / "ret-r.db")
    fill(w, rows)
    with relay_at(data, 0) as relay:
        url = f"ws://127.0.0.1:{relay.port}"
        await sync_once(w, url, "ret")
        full = await through_proxy(relay, r, "ret")
        rnd = random.Random(3)
        changed = rnd.sample(range(rows), rows // 100)
        third = len(changed) // 3
        with w.conn:
            for k in changed[:third]:
                w.conn.execute("UPDATE items SET n = -n WHERE id = ?", (k,))
            for k in changed[third : 2 * third]:
                w.conn.execute("DELETE FROM items WHERE id = ?", (k,))
            fill(w, len(changed) - 2 * third, start=rows)
        await sync_once(w, url, "ret")
    with relay_at(data, 400 * DAY) as relay:
        await sync_once(w, f"ws://127.0.0.1:{relay.port}", "ret")
    with trio.fail_after(300):
        await trio.run_process(
            [sys.executable, "-m", "crsync_relay.cli", "gc", "--data-dir", str(data)],
            capture_stdout=True,
            env={**os.environ, "CRSYNC_RELAY_CLOCK_SKEW": str(400 * DAY)},
        )
    with relay_at(data, 400 * DAY) as relay:
        back = await through_proxy(relay, r, "ret")
    same = (
        r.conn.execute("SELECT * FROM items ORDER BY id").fetchall()
        == w.conn.execute("SELECT * FROM items ORDER BY id").fetchall()
    )
    assert same, "the returning device did not converge"
    w.close()
    r.close()
    return {"rows": rows, "changed": len(changed), "full": full, "back": back}


async def resume(work: Path, rows: int, cuts: int = 4) -> dict[str, Any]:
    w = device(work / "res-w.db")
    fill(w, rows)  # one transaction: one relay version, read in parts
    with relay_at(work / "relay-res", 0) as relay:
        await sync_once(w, f"ws://127.0.0.1:{relay.port}", "res")
        plain = device(work / "res-plain.db")
        proxy = CountingProxy(relay.port)
        async with trio.open_nursery() as n:
            await n.start(proxy.serve)
            t0 = time.perf_counter()
            await sync_once(plain, proxy.url, "res")
            uncut_s = time.perf_counter() - t0
            uncut = proxy.down
            n.cancel_scope.cancel()
        cut = device(work / "res-cut.db")
        proxy = CountingProxy(relay.port)
        async with trio.open_nursery() as n:
            await n.start(proxy.serve)
            t0 = time.perf_counter()
            async with Peer(
                cut, proxy.url, store="res", watch_files=False, backoff_initial=0.01
            ) as p:
                assert p.stats.connects <= 1
                for k in range(1, cuts + 1):
                    await proxy.wait_down(uncut * k // (cuts + 1))
                    proxy.cut()
                with trio.fail_after(600):
                    await p.wait_synced()
            cut_s = time.perf_counter() - t0
            connects = p.stats.connects
            n.cancel_scope.cancel()
        assert cut.conn.execute("SELECT count(*) FROM items").fetchone()[0] == rows
    for db in (w, plain, cut):
        db.close()
    return {
        "rows": rows,
        "cuts": cuts,
        "uncut_bytes": uncut,
        "cut_bytes": proxy.down,
        "uncut_s": uncut_s,
        "cut_s": cut_s,
        "connects": connects,
    }


# ---------------------------------------------------------------------------- report


def write_report(path: Path, s: dict[str, Any], ret: dict[str, Any], res: dict[str, Any]) -> None:
    load = os.getloadavg()
    lines = [
        "# Long-lived stores: tombstone collection, re-admission, resumable bootstrap",
        "",
        f"Generated by `bench/gc.py` on {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}.",
        "",
        f"Machine: nproc {os.cpu_count()}, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}.",
        "",
        f"## 1. Metadata bytes, {s['rows']:,} rows x 4 cells, {s['deleted']:,} (50%) deleted",
        "",
        "Bytes of crsync's tables and indexes (`dbstat` after `VACUUM`). Per cell: the store "
        "before any delete, divided by its cells. Per tombstone: what the store holds beyond "
        "its live rows (at the per-row cost measured before the deletes), divided by the "
        "deleted rows. Device: the metadata table and its indexes; relay: `relay_cells` and "
        "`relay_graves` with their indexes.",
        "",
        "| | device (metadata) | relay (cells, values included) |",
        "|---|---:|---:|",
        f"| metadata per live cell | {s['dev_bytes_per_cell']:.1f} B | "
        f"{s['relay_bytes_per_cell']:.1f} B |",
        f"| per tombstone, before collection | {s['dev_per_tombstone_before']:.1f} B | "
        f"{s['relay_per_tombstone_before']:.1f} B |",
        f"| per tombstone, after collection | {s['dev_per_tombstone_after']:.1f} B | "
        f"{s['relay_per_tombstone_after']:.1f} B |",
        f"| whole store before / after | {s['dev_total_before']:,} / {s['dev_total_after']:,} B"
        f" | {s['relay_total_before']:,} / {s['relay_total_after']:,} B |",
        "",
        "What stays of a collected delete: on a device the metadata row's key and causal "
        "length (the record the insert trigger reads to give a re-insert the next causal "
        "length; the row leaves the `dbv` index); on the relay `(table, pk, cl, version)` in "
        "`relay_graves`.",
        "",
        "## 2. Tombstones left after a collection",
        "",
        f"- One device lagging (its received position one version below the head): the "
        f"horizon stopped at relay version {s['lag_horizon']}; {s['lag_collected']:,} "
        f"tombstones collected, **{s['lag_left']:,} left, all younger than the horizon** "
        f"({s['lag_younger']:,} tombstones have a version above it). Target: only those "
        f"younger than the horizon: {'met' if s['lag_left'] == s['lag_younger'] else 'MISSED'}.",
        f"- Every device caught up: {s['final_collected']:,} more collected, "
        f"{s['final_left']:,} left on the relay; on the device {s['dev_tombstones_left']:,} "
        f"tombstones left and {s['dev_collected']:,} compacted.",
        "",
        "## 3. A device back after 400 days",
        "",
        f"A store of {ret['rows']:,} rows; the device syncs, goes away; {ret['changed']:,} rows "
        "(1%) change meanwhile (a third updated, a third deleted, a third new); the relay's "
        "clock moves 400 days (`CRSYNC_RELAY_CLOCK_SKEW`), the writer syncs, `crsync-relay gc` "
        "collects (the absent device departs), and the device returns.",
        "",
        f"- full bootstrap of the store: {ret['full']:,} bytes on the wire (both ways)",
        f"- the returning device: **{ret['back']:,} bytes** "
        f"({100 * ret['back'] / ret['full']:.2f}% of a full bootstrap; target < 5%: "
        f"{'met' if ret['back'] < 0.05 * ret['full'] else 'MISSED'})",
        "",
        "## 4. Resuming a cut bootstrap",
        "",
        f"{res['rows']:,} rows written in one transaction (one relay version, read in parts "
        f"and staged by the device as they arrive); the connection cut {res['cuts']} times, "
        "evenly through the transfer.",
        "",
        f"- uncut: {res['uncut_bytes']:,} bytes down in {res['uncut_s']:.2f} s",
        f"- cut {res['cuts']} times ({res['connects']} connections): "
        f"{res['cut_bytes']:,} bytes down "
        f"({100 * (res['cut_bytes'] / res['uncut_bytes'] - 1):+.1f}%) in {res['cut_s']:.2f} s "
        "(reconnect backoff included)",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10k rows: a smoke test")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-gc.md"))
    args = ap.parse_args()
    rows = args.rows or (10_000 if args.quick else 100_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        s = sizes(work, rows)
        ret = trio.run(returning, work, rows)
        res = trio.run(resume, work, max(rows // 2, 5_000))
    write_report(args.output, s, ret, res)
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
