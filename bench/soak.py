"""Soak run: many peers across many stores writing continuously against one relay process.

Measures, over time: write throughput, propagation latency (write on one device -> row merged on
another device of the same store), relay memory (RSS) and open files; at the end checks that
every device of every store holds every row written (nothing lost) and counts errors (peers
stopped, relay errors in its log). Figures go to ``bench/RESULTS-soak.md`` (or ``--output``).

    python bench/soak.py                 # 200 peers, 50 stores, 10 minutes
    python bench/soak.py --minutes 60    # longer
    python bench/soak.py --quick         # 20 peers, 5 stores, 20 seconds (smoke test)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import random
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import trio

import crsync
from crsync.peer import Peer, PeerState

SCHEMA = "CREATE TABLE IF NOT EXISTS events (id TEXT PRIMARY KEY NOT NULL, t REAL, body TEXT)"
ERROR_LINES = re.compile(r"relay\.(internal_error|store_write_failed|protocol_error|refused)")


class Relay:
    """A relay subprocess whose log is scanned for errors."""

    def __init__(self, data_dir: Path, secret: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "crsync_relay.cli",
            "serve",
            "--data-dir",
            str(data_dir),
            "--port",
            "0",
            "--secret-file",
            str(secret),
            "--log-level",
            "info",
        ]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.errors: list[str] = []
        self.port = 0
        ready = threading.Event()

        def read() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                if "relay.listening" in line and not self.port:
                    self.port = int(line.split("port=")[1].split()[0])
                    ready.set()
                elif ERROR_LINES.search(line):
                    self.errors.append(line.strip())

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(30):
            self.proc.kill()
            raise RuntimeError("relay did not start")

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def cpu_seconds(self) -> float:
        """User + system CPU time the relay used so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@contextlib.contextmanager
def running_relay(work: Path) -> Iterator[tuple[Relay, bytes]]:
    secret = work / "secret"
    secret.write_text(secrets.token_urlsafe(48))
    r = Relay(work / "relay", secret)
    try:
        yield r, secret.read_bytes().strip()
    finally:
        r.stop()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


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
        self.latencies: list[float] = []  # (write -> merged here), seconds, since last sample
        self.peer: Peer | None = None

    def on_progress(self, _upto: int, _head: int) -> None:
        now = time.time()
        rows = self.db.conn.execute(
            "SELECT rowid, t, id LIKE ? FROM events WHERE rowid > ? ORDER BY rowid",
            (f"{self.name}-%", self.last_rowid),
        ).fetchall()
        for rowid, t, own in rows:
            self.last_rowid = max(self.last_rowid, rowid)
            if not own:  # the device's own writes have rowids too
                self.latencies.append(now - t)


async def soak(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="crsync-soak-") as tmp:
        work = Path(tmp)
        with running_relay(work) as (relay, secret):
            from crsync_relay.auth import issue_token

            token = issue_token(secret, ["*"], 86400, "soak")
            devices = [
                Device(work / f"d{i}.db", f"d{i}", f"store{i % args.stores}")
                for i in range(args.peers)
            ]
            samples: list[dict[str, float]] = []
            end = trio.current_time() + args.seconds
            stopped = trio.Event()

            async def writer(d: Device) -> None:
                rnd = random.Random(d.name)
                while trio.current_time() < end:
                    d.written += 1
                    d.db.conn.execute(
                        "INSERT INTO events VALUES (?, ?, ?)",
                        (f"{d.name}-{d.written}", time.time(), "x" * rnd.randrange(10, 200)),
                    )
                    assert d.peer is not None
                    d.peer.notify()
                    await trio.sleep(rnd.expovariate(args.rate))  # Poisson arrivals per device

            async def sampler() -> None:
                t0 = trio.current_time()
                last_written = 0
                last_t = t0
                last_cpu = relay.cpu_seconds()
                while not stopped.is_set():
                    with trio.move_on_after(args.sample_every):
                        await stopped.wait()
                    now = trio.current_time()
                    lat = [x for d in devices for x in d.latencies]
                    for d in devices:
                        d.latencies = []
                    written = sum(d.written for d in devices)
                    cpu = relay.cpu_seconds()
                    samples.append(
                        {
                            "t": now - t0,
                            "writes_s": (written - last_written) / max(now - last_t, 1e-9),
                            "deliveries": len(lat),
                            "p50_ms": pct(lat, 0.5) * 1000,
                            "p99_ms": pct(lat, 0.99) * 1000,
                            "rss_mb": relay.rss_mb(),
                            "fds": relay.fds(),
                            "relay_cpu": 100 * (cpu - last_cpu) / max(now - last_t, 1e-9),
                        }
                    )
                    last_written, last_t, last_cpu = written, now, cpu

            started = time.perf_counter()
            async with contextlib.AsyncExitStack() as stack:
                for d in devices:
                    d.peer = await stack.enter_async_context(
                        Peer(
                            d.db,
                            relay.url,
                            store=d.store,
                            token=token,
                            watch_files=False,
                            on_progress=d.on_progress,
                        )
                    )
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(sampler)
                    async with trio.open_nursery() as writers:
                        for d in devices:
                            writers.start_soon(writer, d)
                    with trio.fail_after(300):
                        for _ in range(2):
                            for d in devices:
                                assert d.peer is not None
                                await d.peer.wait_synced()
                    stopped.set()
                elapsed = time.perf_counter() - started
                peer_errors = sum(
                    1 for d in devices if d.peer is not None and d.peer.state is PeerState.ERROR
                )
                reconnects = sum(
                    max(0, d.peer.stats.connects - 1) for d in devices if d.peer is not None
                )
            # nothing lost: every device holds every row written to its store
            expected: dict[str, int] = {}
            for d in devices:
                expected[d.store] = expected.get(d.store, 0) + d.written
            lost = 0
            for d in devices:
                n = d.db.conn.execute("SELECT count(*) FROM events").fetchone()[0]
                lost += expected[d.store] - n
                d.db.close()
            total = sum(expected.values())
            return {
                "peers": args.peers,
                "stores": args.stores,
                "seconds": args.seconds,
                "elapsed": elapsed,
                "writes": total,
                "samples": samples,
                "lost": lost,
                "peer_errors": peer_errors,
                "reconnects": reconnects,
                "relay_errors": list(relay.errors),
                "sqlite": sqlite3.sqlite_version,
            }


def write_report(path: Path, r: dict[str, object], quick: bool) -> None:
    samples = r["samples"]
    assert isinstance(samples, list)
    samples = [s for s in samples if s["deliveries"]]
    steady = samples[1:-1] or samples  # the first and last windows are partial
    lines = [
        "# Soak run" + (" (--quick)" if quick else ""),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" SQLite {r['sqlite']}. Relay in its own process; peers in one process (trio).",
        "",
        f"{r['peers']} peers across {r['stores']} stores, writing for {r['seconds']:.0f} s "
        f"(then catching up): {r['writes']} rows written, **{r['lost']} lost**, "
        f"{r['peer_errors']} peers stopped on an error, {r['reconnects']} reconnections, "
        f"{len(r['relay_errors'])} error lines in the relay log.",  # type: ignore[arg-type]
        "",
        "| t (s) | writes/s | deliveries | p50 propagation (ms) | p99 propagation (ms) | "
        "relay RSS (MB) | relay open fds | relay CPU (%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in samples:
        if not s["deliveries"]:
            continue
        lines.append(
            f"| {s['t']:.0f} | {s['writes_s']:.0f} | {s['deliveries']} | {s['p50_ms']:.1f} | "
            f"{s['p99_ms']:.1f} | {s['rss_mb']:.1f} | {s['fds']} | {s['relay_cpu']:.0f} |"
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
    assert isinstance(errors, list)
    if errors:
        lines += ["", "Relay error lines (first 10):", "", "```", *errors[:10], "```"]
    path.write_text("\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="how long peers write")
    ap.add_argument("--peers", type=int, default=200)
    ap.add_argument("--stores", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2.0, help="writes per second per peer")
    ap.add_argument("--sample-every", type=float, default=10.0, help="seconds per window")
    ap.add_argument("--quick", action="store_true", help="20 peers, 5 stores, 20 s")
    ap.add_argument("--output", type=Path, default=Path(__file__).with_name("RESULTS-soak.md"))
    args = ap.parse_args()
    args.seconds = args.minutes * 60
    if args.quick:
        args.peers, args.stores, args.seconds, args.sample_every = 20, 5, 20.0, 4.0
    r = trio.run(soak, args)
    write_report(args.output, r, args.quick)
    print(args.output.read_text())
    return 0 if r["lost"] == 0 and r["peer_errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
