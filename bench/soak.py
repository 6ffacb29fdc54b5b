"""Soak run: many peers across many stores writing continuously against one relay process.

Measures, over time: write throughput, propagation latency (write on one device -> row merged on
another device of the same store), relay memory (RSS) and open files; at the end checks that
every device of every store holds every row written (nothing lost) and counts errors (peers
stopped, relay errors in its log). Figures go to ``bench/RESULTS-soak.md`` (or ``--output``).

The peers are spread over several client processes (``--client-procs``, devices of one store
land in different processes), so one Python process falling behind does not show up as relay
latency. Every row carries the wall-clock time of its write; a device records, when the row is
merged, that time subtracted from the clock (all processes run on one machine, one clock).
The parent process runs the relay, samples it, and talks to the clients with JSON lines: a
client gets its devices on stdin, says ``ready``, gets the start and end times, streams its
writes and deliveries, reports what it wrote once everything is pushed, gets the totals of every
store and reports what is missing.

    python bench/soak.py                 # 200 peers, 50 stores, 10 minutes, 4 client processes
    python bench/soak.py --minutes 60    # longer
    python bench/soak.py --quick         # 20 peers, 5 stores, 20 seconds (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import queue
import random
import re
import secrets
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio
from _procstats import cpu_seconds, open_fds, pct, rss_mb
from crsync_relay.process import RelayLauncher, relay_process

import crsync
from crsync.peer import Peer, PeerState

SCHEMA = "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY NOT NULL, t REAL, body TEXT)"
ERROR_LINES = re.compile(r"relay\.(internal_error|store_write_failed|protocol_error|refused)")
FLUSH_EVERY = 1.0  # seconds between a client's data lines


def relay_errors(relay: RelayLauncher) -> list[str]:
    """The relay's log lines reporting an error or a refusal."""
    return [line.strip() for line in relay.lines if ERROR_LINES.search(line)]


@contextlib.contextmanager
def running_relay(work: Path) -> Iterator[tuple[RelayLauncher, bytes]]:
    """A relay process (the one launcher of tests, examples and benchmarks) and its secret."""
    secret = work / "secret"
    secret.write_text(secrets.token_urlsafe(48))
    secret.chmod(0o600)  # the relay refuses a secret others can read
    with relay_process(
        work / "relay", secret_file=secret, args=["--log-level", "info"], stop_timeout=20
    ) as r:
        yield r, secret.read_bytes().strip()


# ---------------------------------------------------------------------- client process


class Device:
    """One device: its database, its peer, what it wrote and what it saw arrive."""

    def __init__(self, path: Path, name: str, store: str) -> None:
        self.db = crsync.connect(path)
        self.db.conn.execute(SCHEMA)
        self.db.track("events")
        self.name = name
        self.store = store
        self.written = 0
        self.last_rowid = 0
        self.peer: Peer | None = None

    def on_progress(self, deliveries: list[tuple[float, float]], _done: int, _total: int) -> None:
        """Record ``(arrival, latency)`` of the other devices' rows merged since last time."""
        now = time.time()
        rows = self.db.conn.execute(
            "SELECT rowid, t, id LIKE ? FROM events WHERE rowid > ? ORDER BY rowid",
            (f"{self.name}-%", self.last_rowid),
        ).fetchall()
        for rowid, t, own in rows:
            self.last_rowid = max(self.last_rowid, rowid)
            if not own:  # the device's own writes have rowids too
                deliveries.append((now, now - t))


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def read_line() -> dict[str, Any]:
    line = await trio.to_thread.run_sync(sys.stdin.readline)
    if not line:
        raise SystemExit("soak client: the parent went away")
    msg: dict[str, Any] = json.loads(line)
    return msg


async def client() -> None:
    """A client process: runs the devices the parent assigns, over JSON lines."""
    cfg = await read_line()
    work = Path(cfg["dir"])
    devices = [Device(work / f"{name}.db", name, store) for name, store in cfg["devices"]]
    writes: list[float] = []
    deliveries: list[tuple[float, float]] = []
    async with contextlib.AsyncExitStack() as stack:
        for d in devices:
            d.peer = await stack.enter_async_context(
                Peer(
                    d.db,
                    cfg["url"],
                    store=d.store,
                    token=cfg["token"],
                    watch_files=False,
                    on_progress=functools.partial(d.on_progress, deliveries),
                )
            )
        emit({"ready": True})
        go = await read_line()
        start, end = float(go["start"]), float(go["end"])
        await trio.sleep(max(0.0, start - time.time()))  # the shared start time (a timer)

        async def writer(d: Device) -> None:
            rnd = random.Random(d.name)
            while time.time() < end:
                d.written += 1
                t = time.time()
                d.db.conn.execute(
                    "INSERT INTO events VALUES (?, ?, ?)",
                    (f"{d.name}-{d.written}", t, "x" * rnd.randrange(10, 200)),
                )
                writes.append(t)
                assert d.peer is not None
                d.peer.notify()
                await trio.sleep(rnd.expovariate(cfg["rate"]))  # Poisson arrivals per device

        def flush() -> None:
            emit({"w": writes[:], "d": deliveries[:]})
            writes.clear()
            deliveries.clear()

        async def flusher(stop: trio.Event) -> None:
            while not stop.is_set():
                with trio.move_on_after(FLUSH_EVERY):
                    await stop.wait()
                flush()

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(flusher, stop)
            async with trio.open_nursery() as writers:
                for d in devices:
                    writers.start_soon(writer, d)
            with trio.fail_after(300):
                for _ in range(2):
                    for d in devices:
                        assert d.peer is not None
                        await d.peer.wait_synced()
            written: dict[str, int] = {}
            for d in devices:
                written[d.store] = written.get(d.store, 0) + d.written
            emit({"pushed": written})
            # every client has pushed everything: catch up with the relay's final head
            expected: dict[str, int] = (await read_line())["expected"]
            with trio.fail_after(300):
                for d in devices:
                    assert d.peer is not None
                    await d.peer.wait_synced()
            stop.set()
        lost = 0
        for d in devices:
            n = d.db.conn.execute("SELECT count(*) FROM events").fetchone()[0]
            lost += expected[d.store] - n
        peer_errors = sum(
            1 for d in devices if d.peer is not None and d.peer.state is PeerState.ERROR
        )
        reconnects = sum(max(0, d.peer.stats.connects - 1) for d in devices if d.peer is not None)
    for d in devices:
        d.db.close()
    emit({"done": {"lost": lost, "peer_errors": peer_errors, "reconnects": reconnects}})


# ---------------------------------------------------------------------- parent process


class Client:
    """A client subprocess and the JSON lines it sent."""

    def __init__(self, index: int, cfg: dict[str, Any]) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.writes: list[float] = []
        self.deliveries: list[tuple[float, float]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(cfg)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = json.loads(line)
            if "w" in msg:
                with self.lock:
                    self.writes += msg["w"]
                    self.deliveries += [(a, b) for a, b in msg["d"]]
            else:
                self.lines.put(msg)
        self.lines.put(None)

    def send(self, msg: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()

    def expect(self, key: str, timeout: float) -> Any:
        try:
            msg = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"client {self.index}: no {key!r} within {timeout} s") from None
        if msg is None or key not in msg:
            raise RuntimeError(f"client {self.index} ended or sent {msg!r}, expected {key!r}")
        return msg[key]

    def cpu_seconds(self) -> float:
        try:
            return cpu_seconds(self.proc.pid)
        except (OSError, IndexError):
            return 0.0

    def close(self) -> None:
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def soak(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="crsync-soak-") as tmp:
        work = Path(tmp)
        with running_relay(work) as (relay, secret):
            from crsync_relay.auth import issue_token

            token = issue_token(secret, ["*"], 86400, "soak")
            nprocs = max(1, min(args.client_procs, args.peers))
            assigned: list[list[tuple[str, str]]] = [[] for _ in range(nprocs)]
            for i in range(args.peers):
                assigned[i % nprocs].append((f"d{i}", f"store{i % args.stores}"))
            clients = [
                Client(
                    k,
                    {
                        "dir": str(work),
                        "url": relay.url,
                        "token": token,
                        "rate": args.rate,
                        "devices": assigned[k],
                    },
                )
                for k in range(nprocs)
            ]
            try:
                for c in clients:
                    c.expect("ready", 300)
                t0 = time.time() + 0.5
                end = t0 + args.seconds
                for c in clients:
                    c.send({"start": t0, "end": end})
                started = time.perf_counter()
                # sample the relay and the clients at window boundaries until everything is
                # pushed (a client says so once all its devices' writes are acknowledged)
                relay_samples: list[dict[str, float]] = []
                last_cpu, last_ccpu = cpu_seconds(relay.pid), sum(c.cpu_seconds() for c in clients)
                last_t = time.time()
                pushed: dict[int, dict[str, int]] = {}
                k = 1
                while len(pushed) < nprocs:
                    boundary = t0 + k * args.sample_every
                    while len(pushed) < nprocs and time.time() < boundary:
                        for c in clients:
                            if c.index not in pushed and not c.lines.empty():
                                pushed[c.index] = c.expect("pushed", 1)
                        time.sleep(min(0.1, max(0.0, boundary - time.time())))  # polling timer
                    now = time.time()
                    cpu = cpu_seconds(relay.pid)
                    ccpu = sum(c.cpu_seconds() for c in clients)
                    relay_samples.append(
                        {
                            "end": now,
                            "rss_mb": rss_mb(relay.pid),
                            "fds": open_fds(relay.pid),
                            "relay_cpu": 100 * (cpu - last_cpu) / max(now - last_t, 1e-9),
                            "client_cpu": 100 * (ccpu - last_ccpu) / max(now - last_t, 1e-9),
                        }
                    )
                    last_cpu, last_ccpu, last_t = cpu, ccpu, now
                    k += 1
                expected: dict[str, int] = {}
                for written in pushed.values():
                    for store, n in written.items():
                        expected[store] = expected.get(store, 0) + n
                for c in clients:
                    c.send({"expected": expected})
                done = [c.expect("done", 600) for c in clients]
                elapsed = time.perf_counter() - started
            finally:
                for c in clients:
                    c.close()
            writes = sorted(t for c in clients for t in c.writes)
            deliveries = [x for c in clients for x in c.deliveries]
            samples: list[dict[str, float]] = []
            start = t0
            for s in relay_samples:
                lat = [lat for arrival, lat in deliveries if start <= arrival < s["end"]]
                n_writes = sum(1 for t in writes if start <= t < s["end"])
                samples.append(
                    {
                        "t": s["end"] - t0,
                        "writes_s": n_writes / max(s["end"] - start, 1e-9),
                        "deliveries": len(lat),
                        "p50_ms": pct(lat, 0.5) * 1000,
                        "p99_ms": pct(lat, 0.99) * 1000,
                        "rss_mb": s["rss_mb"],
                        "fds": s["fds"],
                        "relay_cpu": s["relay_cpu"],
                        "client_cpu": s["client_cpu"],
                    }
                )
                start = s["end"]
            return {
                "peers": args.peers,
                "stores": args.stores,
                "client_procs": nprocs,
                "seconds": args.seconds,
                "elapsed": elapsed,
                "writes": sum(expected.values()),
                "samples": samples,
                "lost": sum(d["lost"] for d in done),
                "peer_errors": sum(d["peer_errors"] for d in done),
                "reconnects": sum(d["reconnects"] for d in done),
                "relay_errors": relay_errors(relay),
                "sqlite": sqlite3.sqlite_version,
            }


def write_report(path: Path, r: dict[str, Any], quick: bool) -> None:
    samples = [s for s in r["samples"] if s["deliveries"]]
    steady = samples[1:-1] or samples  # the first and last windows are partial
    lines = [
        "# Soak run" + (" (--quick)" if quick else ""),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" SQLite {r['sqlite']}. Relay in its own process; peers in {r['client_procs']} client"
        " processes (trio), devices of a store in different processes; propagation measured"
        " from the write's timestamp in the row to its merge on another device (one clock).",
        "",
        f"{r['peers']} peers across {r['stores']} stores, writing for {r['seconds']:.0f} s "
        f"(then catching up): {r['writes']} rows written, **{r['lost']} lost**, "
        f"{r['peer_errors']} peers stopped on an error, {r['reconnects']} reconnections, "
        f"{len(r['relay_errors'])} error lines in the relay log.",
        "",
        "| t (s) | writes/s | deliveries | p50 propagation (ms) | p99 propagation (ms) | "
        "relay RSS (MB) | relay open fds | relay CPU (%) | clients CPU (%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        lines.append(
            f"| {s['t']:.0f} | {s['writes_s']:.0f} | {s['deliveries']} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['rss_mb']:.1f} | {s['fds']} | {s['relay_cpu']:.0f} | "
            f"{s['client_cpu']:.0f} |"
        )
    if steady:
        w = [s["writes_s"] for s in steady]
        p99 = [s["p99_ms"] for s in steady]
        rss = [s["rss_mb"] for s in steady]
        fds = [s["fds"] for s in steady]
        lines += [
            "",
            f"Steady state (windows 2..n-1): writes/s min {min(w):.0f} max {max(w):.0f}; "
            f"p99 propagation max {max(p99):.1f} ms; relay RSS {rss[0]:.1f} -> {rss[-1]:.1f} MB; "
            f"open fds {fds[0]} -> {fds[-1]}.",
        ]
    errors = r["relay_errors"]
    if errors:
        lines += ["", "Relay error lines (first 10):", "", "```", *errors[:10], "```"]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long peers write")
    ap.add_argument("--peers", type=int, default=200)
    ap.add_argument("--stores", type=int, default=50)
    ap.add_argument("--client-procs", type=int, default=4, help="processes the peers run in")
    ap.add_argument("--rate", type=float, default=2.0, help="writes per second per peer")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--quick", action="store_true", help="20 peers, 5 stores, 20 s")
    ap.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-soak.md"))
    ap.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.client:
        trio.run(client)
        return 0
    args.seconds = args.minutes * 60
    if args.quick:
        args.peers, args.stores, args.seconds, args.sample_every = 20, 5, 20.0, 4.0
    r = soak(args)
    write_report(args.output, r, args.quick)
    print(args.output.read_text())
    return 0 if r["lost"] == 0 and r["peer_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
