"""Live-query benchmark: commit-to-watch latency across devices, cost of idle watches.

* latency: device A commits one row; device B (another file, syncing through an in-process
  relay on 127.0.0.1) has ``db.watch`` on that table; time from A's commit to B's watch
  yielding the new row (p50/p99).
* overhead: single-row autocommit inserts per second into one table with no watch, then with
  100 idle watches (on another table of the same file) open in the same process.

    python bench/live.py            # 200 latency samples, 3000 inserts
    python bench/live.py --quick    # smoke test
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "server")]

from crsync_relay.server import RelayConfig, run_relay  # noqa: E402

import crsync  # noqa: E402
from crsync.peer import Peer  # noqa: E402

DDL = [
    "CREATE TABLE IF NOT EXISTS pings (id INTEGER PRIMARY KEY, at REAL)",
    "CREATE TABLE IF NOT EXISTS other (id INTEGER PRIMARY KEY, v TEXT)",
]


def device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    for stmt in DDL:
        db.conn.execute(stmt)
    db.track("pings", integer_keys="app-assigned")
    db.track("other", integer_keys="app-assigned")
    return db


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


async def latency(tmp: Path, samples: int) -> list[float]:
    config = RelayConfig(data_dir=tmp / "relay", port=0, dev=True)
    a, b = device(tmp / "a.db"), device(tmp / "b.db")
    out: list[float] = []
    async with trio.open_nursery() as nursery:
        server, _hub = await nursery.start(
            lambda task_status: run_relay(config, task_status=task_status, handle_signals=False)
        )
        port = sorted({lst.socket.getsockname()[1] for lst in server.listeners})[0]
        url = f"ws://127.0.0.1:{port}"
        async with (
            Peer(a, url, store="bench") as pa,
            Peer(b, url, store="bench") as pb,
            b.watch("SELECT max(id) FROM pings") as live,
        ):
            await pa.wait_synced()
            await pb.wait_synced()
            await live.__anext__()
            for i in range(1, samples + 1):
                t0 = time.perf_counter()
                a.conn.execute("INSERT INTO pings VALUES (?, ?)", (i, t0))
                async for rows in live:
                    if rows[0][0] == i:
                        out.append(time.perf_counter() - t0)
                        break
        nursery.cancel_scope.cancel()
    return out


async def throughput(tmp: Path, n: int, watches: int) -> float:
    db = device(tmp / f"w{watches}.db")
    lives = [db.watch("SELECT count(*) FROM other WHERE id > ?", (i,)) for i in range(watches)]
    for live in lives:
        await live.__anext__()
    t0 = time.perf_counter()
    for i in range(n):
        db.conn.execute("INSERT INTO pings VALUES (?, 0)", (i,))
        if i % 100 == 0:
            await trio.lowlevel.checkpoint()  # let the engine task run, as an app's loop would
    rate = n / (time.perf_counter() - t0)
    runs = sum(live.runs for live in lives)
    for live in lives:
        await live.aclose()
    assert runs == watches, "an idle watch re-ran"
    return rate


async def main_async(args: argparse.Namespace) -> str:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lat = await latency(tmp, args.samples)
        base = await throughput(tmp, args.inserts, 0)
        idle = await throughput(tmp, args.inserts, 100)
    ms = [x * 1000 for x in lat]
    return "\n".join(
        [
            "# Live queries: results",
            "",
            f"Machine: {platform.platform()}, Python {platform.python_version()}, "
            f"SQLite {crsync.database.sqlite3.sqlite_version}.",
            "",
            "Command: `.venv/bin/python bench/live.py" + (" --quick" if args.quick else "") + "`",
            "",
            "## Commit on device A to `watch` yielding on device B (through a relay on loopback)",
            "",
            f"{len(ms)} samples: p50 {statistics.median(ms):.1f} ms, p99 {pct(ms, 99):.1f} ms, "
            f"max {max(ms):.1f} ms.",
            "",
            "## Write throughput with idle watches",
            "",
            "| watches open | single-row autocommit inserts/s | relative |",
            "|---:|---:|---:|",
            f"| 0 | {base:,.0f} | 1.00 |",
            f"| 100 (idle: another table) | {idle:,.0f} | {idle / base:.2f} |",
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--inserts", type=int, default=None)
    ap.add_argument("--output", default=str(ROOT / "bench" / "RESULTS-live.md"))
    args = ap.parse_args()
    args.samples = args.samples or (20 if args.quick else 200)
    args.inserts = args.inserts or (500 if args.quick else 3000)
    text = trio.run(main_async, args)
    Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
