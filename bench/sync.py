"""Sync benchmark: propagation latency, relay throughput, bootstrap time, relay merge rate,
relay memory.

Runs a real ``crsync-relay`` process on 127.0.0.1 and in-process peers; writes figures to
``bench/RESULTS-sync.md`` (or ``--output``). Targets: p99 propagation under 50 ms with 10
peers on loopback (issue #3); bootstrap of 1M cells through a relay in at most 8 s and the
relay's merge of a 100k-cell push at >= 300k cells/s (issue #11); relay memory under 300 MB
after 10,000 touched stores.

    python bench/sync.py            # full run (several minutes)
    python bench/sync.py --quick    # small sizes, for a smoke test
    python bench/sync.py --only bootstrap,relay-merge   # some figures only
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import trio
from _procstats import cpu_seconds, open_fds, pct, rss_mb
from crsync_relay.process import relay_process
from websockets.trio.client import connect as ws_connect

import crsync
from crsync import protocol as p
from crsync.peer import Peer

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items "
    "(id INTEGER PRIMARY KEY NOT NULL, a TEXT, b REAL, c INTEGER, d BLOB)"
)


@contextmanager
def relay(data_dir: Path, secret: Path) -> Iterator[tuple[str, int]]:
    # Default cap on open stores (256). One token stands for the many users whose stores the
    # benchmark touches, so the per-subject caps (meant for one user) are lifted.
    args = [
        "--idle-seconds",
        "5",
        "--max-new-stores-per-minute",
        "0",
        "--max-open-stores-per-subject",
        "256",
        "--max-stores-per-subject",
        "0",
    ]
    with relay_process(data_dir, secret_file=secret, args=args) as child:
        yield child.url, child.pid


def device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(SCHEMA)
    db.track("items", integer_keys="app-assigned")
    return db


def relay_merge(work: Path, cells: int, repeats: int = 3) -> dict[str, float]:
    """The relay store's merge of one pushed unit of ``cells`` new cells (what a session does
    with a push once decoded), in process, on fresh store files; median of ``repeats``. For
    context: the wire decode (msgpack + validation) of the same unit in 5,000-cell frames, and
    a bare ``executemany`` INSERT of the same rows into ``relay_cells`` (the SQL floor)."""
    from crsync_relay.store import RelayStore

    a = device(work / "merge-src.db")
    a.conn.execute("BEGIN")
    a.conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        [(i, f"title {i}", i * 0.25, i % 97, b"blob") for i in range(cells // 4)],
    )
    a.conn.execute("COMMIT")
    changes = a.changes()
    schema = {"items": p.TableSchema(("id",), ("a", "b", "c", "d"), (), True)}
    frames = [
        p.encode(p.Push(1, 0, 1, part, False)) for part in p.split_frames(changes, 5000, 8 << 20)
    ]
    bare = [
        (c.table, c.pk, c.cid, c.val, c.col_version, c.site_id, c.cl, c.seq, 1, c.site_id)
        for c in changes
    ]
    merge_s: list[float] = []
    decode_s: list[float] = []
    floor_s: list[float] = []
    for rep in range(repeats):
        store = RelayStore(work / f"merge-{rep}.sqlite3")
        store.check_schema(schema)
        t0 = time.perf_counter()
        _head, wins = store.merge_push(a.site_id, 1, changes, announced_only=True)
        merge_s.append(time.perf_counter() - t0)
        assert wins == len(changes), (wins, len(changes))
        store.close()
        t0 = time.perf_counter()
        for frame in frames:
            p.decode(frame)
        decode_s.append(time.perf_counter() - t0)
        floor = RelayStore(work / f"floor-{rep}.sqlite3")
        t0 = time.perf_counter()
        floor.conn.execute("BEGIN IMMEDIATE")
        floor.conn.executemany(
            "INSERT INTO relay_cells (tbl, pk, cid, val, col_version, site_id, cl, seq, "
            "version, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            bare,
        )
        floor.conn.execute("COMMIT")
        floor_s.append(time.perf_counter() - t0)
        floor.close()
    n = len(changes)
    m, d, f = statistics.median(merge_s), statistics.median(decode_s), statistics.median(floor_s)
    return {
        "cells": n,
        "merge_cells_per_s": n / m,
        "decode_cells_per_s": n / d,
        "floor_cells_per_s": n / f,
        "merge_over_floor": m / f,
    }


async def latency(url: str, token: str, work: Path, npeers: int, rounds: int) -> dict[str, float]:
    dbs = [device(work / f"lat{npeers}-{i}.db") for i in range(npeers)]
    events: list[trio.Event] = [trio.Event() for _ in range(npeers)]

    def progress_cb(i: int):
        def cb(_done: int, _total: int) -> None:
            events[i].set()

        return cb

    samples: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        peers: list[Peer] = []
        for i, db in enumerate(dbs):
            peer = Peer(
                db,
                url,
                store=f"lat{npeers}",
                token=token,
                watch_files=False,
                on_progress=progress_cb(i),
            )
            await stack.enter_async_context(peer)
            peers.append(peer)
        with trio.fail_after(120):
            for peer in peers:
                await peer.wait_synced()
        writer = dbs[0]
        for r in range(rounds):
            for i in range(1, npeers):
                events[i] = trio.Event()
            writer.conn.execute("INSERT INTO items (id, a) VALUES (?, ?)", (r, f"round {r}"))
            t0 = time.perf_counter()
            peers[0].notify()
            with trio.fail_after(60):
                pending = set(range(1, npeers))
                while pending:
                    for i in list(pending):
                        if events[i].is_set():
                            row = (
                                dbs[i]
                                .conn.execute("SELECT 1 FROM items WHERE id = ?", (r,))
                                .fetchone()
                            )
                            if row:
                                samples.append(time.perf_counter() - t0)
                                pending.discard(i)
                            else:
                                events[i] = trio.Event()
                    if pending:
                        i = next(iter(pending))
                        await events[i].wait()
    return {
        "p50_ms": pct(samples, 0.5) * 1000,
        "p99_ms": pct(samples, 0.99) * 1000,
        "samples": len(samples),
    }


async def throughput(
    url: str, token: str, work: Path, nstores: int, per_store: int, rows: int
) -> dict[str, float]:
    """One writer per store pushes ``rows`` rows; the others receive. Cells/s acked by relay."""
    writers = []
    for s in range(nstores):
        db = device(work / f"tp-{s}-w.db")
        db.conn.execute("BEGIN")
        db.conn.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
            [(i, f"t{i}", i * 0.5, i, b"x") for i in range(rows)],
        )
        db.conn.execute("COMMIT")
        writers.append(db)
    readers = [
        [device(work / f"tp-{s}-r{k}.db") for k in range(per_store - 1)] for s in range(nstores)
    ]
    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        peers: list[Peer] = []

        async def run(db: crsync.Database, store: str) -> None:
            async with Peer(db, url, store=store, token=token, watch_files=False) as peer:
                with trio.fail_after(600):
                    await peer.wait_synced()
                peers.append(peer)

        for s in range(nstores):
            n.start_soon(run, writers[s], f"tp{s}")
    push_done = time.perf_counter() - t0
    cells = nstores * rows * 4
    t1 = time.perf_counter()
    async with trio.open_nursery() as n:

        async def recv(db: crsync.Database, store: str) -> None:
            async with Peer(db, url, store=store, token=token, watch_files=False) as peer:
                with trio.fail_after(600):
                    await peer.wait_synced()

        for s in range(nstores):
            for db in readers[s]:
                n.start_soon(recv, db, f"tp{s}")
    fan_out = time.perf_counter() - t1
    return {
        "push_cells_per_s": cells / push_done,
        "fanout_cells_per_s": cells * (per_store - 1) / fan_out,
        "cells": cells,
    }


async def bootstrap(
    url: str, token: str, work: Path, cells: int, relay_pid: int | None = None
) -> dict[str, float]:
    rows = cells // 4
    a = device(work / "boot-a.db")
    a.conn.execute("BEGIN")
    a.conn.executemany(
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        [(i, f"title {i}", i * 0.25, i % 97, b"blob") for i in range(rows)],
    )
    a.conn.execute("COMMIT")
    t0 = time.perf_counter()
    async with Peer(a, url, store="boot", token=token, watch_files=False) as pa:
        with trio.fail_after(900):
            await pa.wait_synced()
    push = time.perf_counter() - t0
    b = device(work / "boot-b.db")
    r0 = cpu_seconds(relay_pid) if relay_pid else 0.0
    c0 = time.process_time()
    t1 = time.perf_counter()
    async with Peer(b, url, store="boot", token=token, watch_files=False) as pb:
        with trio.fail_after(900):
            await pb.wait_synced()
    boot = time.perf_counter() - t1
    peer_cpu = time.process_time() - c0
    relay_cpu = cpu_seconds(relay_pid) - r0 if relay_pid else float("nan")
    n = b.conn.execute("SELECT count(*) FROM items").fetchone()[0]
    assert n == rows, (n, rows)
    return {
        "push_s": push,
        "bootstrap_s": boot,
        "cells": cells,
        "peer_cpu_s": peer_cpu,
        "relay_cpu_s": relay_cpu,
    }


async def touch_stores(url: str, secret: bytes, pid: int, count: int) -> dict[str, float]:
    from crsync_relay.auth import issue_token

    token = issue_token(secret, ["*"], 3600)
    site = secrets.token_bytes(16)
    before = rss_mb(pid)
    t0 = time.perf_counter()
    peak = before

    async def client(start: int) -> None:
        nonlocal peak
        for i in range(start, count, 8):
            async with ws_connect(url, proxy=None, compression=None) as ws:
                await ws.send(
                    p.encode(p.Hello(p.PROTOCOL_VERSION, f"touch-{i}", site, {}, 0, "", token))
                )
                msg = p.decode(await ws.recv())
                assert isinstance(msg, p.Welcome), msg
            if i % 500 == 0:
                peak = max(peak, rss_mb(pid))

    async with trio.open_nursery() as n:
        for k in range(8):
            n.start_soon(client, k)
    took = time.perf_counter() - t0
    return {
        "stores": count,
        "rss_before_mb": before,
        "rss_peak_mb": max(peak, rss_mb(pid)),
        "rss_after_mb": rss_mb(pid),
        "open_fds": open_fds(pid),
        "seconds": took,
    }


FIGURES = ("latency", "throughput", "bootstrap", "relay-merge", "memory")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-sync.md"))
    ap.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated figures to measure (default all: {','.join(FIGURES)})",
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    if not only <= set(FIGURES):
        ap.error(f"--only takes {', '.join(FIGURES)}")
    q = args.quick
    work = Path(tempfile.mkdtemp(prefix="crsync-bench-sync-"))
    secret = secrets.token_urlsafe(48).encode()
    (work / "secret").write_bytes(secret)
    (work / "secret").chmod(0o600)  # the relay refuses a secret others can read
    from crsync_relay.auth import issue_token

    token = issue_token(secret, ["*"], 7200)
    results: dict[str, dict[str, float]] = {}
    with relay(work / "relay", work / "secret") as (url, pid):
        for npeers in ((2, 5) if q else (2, 10, 100)) if "latency" in only else ():
            rounds = 10 if q else (200 if npeers < 100 else 50)
            results[f"latency_{npeers}"] = trio.run(latency, url, token, work, npeers, rounds)
            print(f"latency {npeers} peers: {results[f'latency_{npeers}']}", flush=True)
        if "throughput" in only:
            results["throughput"] = trio.run(
                throughput, url, token, work, 5 if q else 100, 5, 50 if q else 500
            )
            print(f"throughput: {results['throughput']}", flush=True)
        if "bootstrap" in only:
            results["bootstrap"] = trio.run(
                bootstrap, url, token, work, 20_000 if q else 1_000_000, pid
            )
            print(f"bootstrap: {results['bootstrap']}", flush=True)
    if "relay-merge" in only:
        results["relay_merge"] = relay_merge(work, 10_000 if q else 100_000)
        print(f"relay merge: {results['relay_merge']}", flush=True)
    # Memory is measured on a fresh relay process: the phases above leave the allocator and the
    # page caches of their big stores warm, which says nothing about touching many stores.
    if "memory" in only:
        with relay(work / "relay-touch", work / "secret") as (url, pid):
            results["memory"] = trio.run(touch_stores, url, secret, pid, 200 if q else 10_000)
            print(f"memory: {results['memory']}", flush=True)
    write_report(args.output, results, q)
    print(f"wrote {args.output}")
    return 0


def write_report(path: Path, r: dict[str, dict[str, float]], quick: bool) -> None:
    lines = [
        "# crsync sync benchmark" + (" (quick mode: small sizes, not comparable)" if quick else ""),
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}. A real relay "
        "process on 127.0.0.1; peers in one other process (so both share the same 2 cores).",
        "",
    ]
    measured = [
        k
        for k in ("latency", "throughput", "bootstrap", "relay_merge", "memory")
        if any(key.startswith(k) for key in r)
    ]
    if len(measured) < 5:
        lines += [f"Figures measured in this run (`--only`): {', '.join(measured)}.", ""]
    lines += [
        "| figure | value | target |",
        "|---|---|---|",
    ]
    for key, v in r.items():
        if key.startswith("latency_"):
            n = key.split("_")[1]
            target = "p99 < 50 ms" if n == "10" else ""
            lines.append(
                f"| propagation commit->merged, {n} peers, p50 / p99 | "
                f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms ({int(v['samples'])} samples)"
                f" | {target} |"
            )
    if "throughput" in r:
        t = r["throughput"]
        lines.append(
            f"| relay throughput, pushes ({int(t['cells'])} cells) | "
            f"{t['push_cells_per_s']:,.0f} cells/s | |"
        )
        lines.append(
            f"| relay throughput, fan-out to 4 readers per store | "
            f"{t['fanout_cells_per_s']:,.0f} cells/s | |"
        )
    if "bootstrap" in r:
        b = r["bootstrap"]
        lines.append(
            f"| bootstrap of {int(b['cells']):,} cells (new device) | {b['bootstrap_s']:.1f} s "
            f"(initial push {b['push_s']:.1f} s; CPU during the bootstrap: peer "
            f"{b['peer_cpu_s']:.1f} s, relay {b['relay_cpu_s']:.1f} s) | <= 8 s for 1M |"
        )
    if "relay_merge" in r:
        m = r["relay_merge"]
        lines.append(
            f"| relay merge of a {int(m['cells']):,}-cell push (new rows, in process) | "
            f"{m['merge_cells_per_s']:,.0f} cells/s ({m['merge_over_floor']:.2f}x a bare "
            f"INSERT of the same cells into relay_cells, {m['floor_cells_per_s']:,.0f} "
            f"cells/s; wire decode {m['decode_cells_per_s']:,.0f} cells/s) | >= 300k cells/s |"
        )
    if "memory" in r:
        m = r["memory"]
        lines.append(
            f"| relay RSS after touching {int(m['stores']):,} stores | "
            f"{m['rss_after_mb']:.0f} MB (before {m['rss_before_mb']:.0f} MB, peak "
            f"{m['rss_peak_mb']:.0f} MB), "
            f"{int(m['open_fds'])} open fds | < 300 MB |"
        )
    lines += [
        "",
        "Stores are closed when idle and capped (`--max-open-stores`), so memory and "
        "open files stay bounded however many stores are touched.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
