"""Relay memory and responsiveness under abuse (security review H1, M2).

Starts a real relay process and measures its resident memory (RSS) and an honest peer's ping
round trips on another store:

* after one 64 MiB frame from a client without a token (refused unread, websockets' limit);
* after an expanding 250 KiB hello (the largest first frame the relay decodes);
* with N authenticated peers that never read, each owed a catch-up of a ~20 MiB store, while
  they are connected and after the relay dropped them (``--send-timeout``).

Figures go to ``bench/RESULTS-abuse.md``. Absolute numbers depend on the machine; compare the
RSS growth with the store size and the number of peers.

    python bench/abuse.py            # 100 non-reading peers
    python bench/abuse.py --quick    # 10 non-reading peers (smoke test)
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack
import trio
from crsync_relay.auth import issue_token
from crsync_relay.process import relay_process
from websockets.client import ClientProtocol
from websockets.protocol import State
from websockets.trio.client import connect as ws_connect
from websockets.uri import parse_uri

import crsync
from crsync import protocol as p
from crsync.peer import Peer

ROOT = Path(__file__).resolve().parent
SCHEMA = {"todos": p.TableSchema(("id",), ("data",))}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def expanding_hello(size: int) -> bytes:
    """A hello-shaped map whose extra key holds ``size`` empty arrays (1 byte each)."""
    n = size - 64
    body = bytearray(msgpack.packb({"t": "hello", "v": 1, "store": "x"}))
    body[0] = 0x84
    body += msgpack.packb("pad") + b"\xdd" + n.to_bytes(4, "big") + b"\x90" * n
    return bytes(body)


def client_that_never_reads(port: int, hello: bytes) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}"), max_size=None)
    proto.send_request(proto.connect())
    sock.sendall(b"".join(proto.data_to_send()))
    while proto.handshake_exc is None and proto.state is not State.OPEN:
        proto.receive_data(sock.recv(4096))
    proto.send_binary(hello)
    sock.sendall(b"".join(proto.data_to_send()))
    return sock


async def pinger(url: str, token: str, out: list[float], stop: trio.Event) -> None:
    async with ws_connect(url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, "honest", os.urandom(16), SCHEMA, 0, "", token)))
        await ws.recv()
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.perf_counter()
            await ws.send(p.encode(p.Ping(i)))
            while not isinstance(p.decode(await ws.recv()), p.Pong):
                pass
            out.append((time.perf_counter() - t0) * 1000)
            await trio.sleep(0.01)  # pacing of the honest load


async def unauthenticated(url: str, frame: bytes) -> None:
    try:
        async with ws_connect(url, compression=None, max_size=None) as ws:
            await ws.send(frame)
            with trio.move_on_after(30):
                await ws.recv()
    except Exception:  # refused: close code 1009 or an error frame, either is the point
        pass


async def run(peers: int, work: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(48)
    (work / "secret").write_text(secret)
    (work / "secret").chmod(0o600)
    token = issue_token(secret.encode(), ["*"], 3600, subject="bench")
    figures: dict[str, Any] = {"peers": peers}
    with relay_process(
        work / "data",
        secret_file=work / "secret",
        args=["--send-timeout", "5", "--max-unauthenticated-per-ip", str(peers + 64)],
    ) as relay:
        # a ~20 MiB store
        db = crsync.connect(work / "device.db")
        db.conn.execute("CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, data BLOB)")
        db.track("todos")
        blob = os.urandom(64 * 1024)
        with db.conn:
            db.conn.executemany(
                "INSERT INTO todos VALUES (?, ?)", ((f"r{i}", blob) for i in range(320))
            )
        async with Peer(db, relay.url, store="big", token=token) as peer:
            await peer.wait_synced()
        store_mib = (work / "data" / "big.store.sqlite3").stat().st_size / 2**20
        figures["store_mib"] = store_mib
        figures["rss_idle"] = rss_mib(relay.pid)

        pings: list[float] = []
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pinger, relay.url, token, pings, stop)
            t0 = time.perf_counter()
            await unauthenticated(relay.url, b"\x00" * (64 * 2**20))
            figures["frame64_seconds"] = time.perf_counter() - t0
            figures["rss_after_64mib_frame"] = rss_mib(relay.pid)
            n0 = len(pings)
            await unauthenticated(relay.url, expanding_hello(250 * 1024))
            figures["rss_after_expanding_hello"] = rss_mib(relay.pid)
            while len(pings) < n0 + 20:  # noqa: ASYNC110 - the pinger appends as it goes
                await trio.sleep(0.01)
            figures["ping_p50_ms"] = statistics.median(pings)
            figures["ping_max_ms"] = max(pings)
            hello = p.encode(p.Hello(1, "big", os.urandom(16), SCHEMA, 0, "", token))
            socks = [client_that_never_reads(relay.port, hello) for _ in range(peers)]
            peak = figures["rss_after_expanding_hello"]
            deadline = time.monotonic() + 120
            while sum("relay.peer_stalled" in line for line in relay.lines) < peers:
                peak = max(peak, rss_mib(relay.pid))
                if time.monotonic() > deadline:
                    raise RuntimeError("the relay did not drop the stalled peers")
                await trio.sleep(0.2)
            figures["rss_peak_stalled"] = peak
            for s in socks:
                s.close()
            await trio.sleep(1)  # let the relay finish closing (a measurement pause)
            figures["rss_after_drop"] = rss_mib(relay.pid)
            stop.set()
    return figures


def report(f: dict[str, Any], quick: bool) -> str:
    per_peer = (f["rss_peak_stalled"] - f["rss_after_expanding_hello"]) / f["peers"]
    return "\n".join(
        [
            "# Relay under abuse" + (" (--quick)" if quick else ""),
            "",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
            f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}. Relay in its own "
            "process; figures are the relay's resident memory (RSS).",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| relay RSS, idle with a {f['store_mib']:.1f} MiB store open | "
            f"{f['rss_idle']:.1f} MiB |",
            f"| after one 64 MiB frame without a token (refused unread in "
            f"{f['frame64_seconds']:.2f} s) | {f['rss_after_64mib_frame']:.1f} MiB |",
            f"| after an expanding 250 KiB hello (decoded, refused) | "
            f"{f['rss_after_expanding_hello']:.1f} MiB |",
            f"| honest peer's ping meanwhile: median / max | {f['ping_p50_ms']:.1f} / "
            f"{f['ping_max_ms']:.1f} ms |",
            f"| peak with {f['peers']} authenticated peers that never read (each owed the "
            f"store) | {f['rss_peak_stalled']:.1f} MiB ({per_peer:.2f} MiB per peer) |",
            f"| after the relay dropped them (--send-timeout 5) | {f['rss_after_drop']:.1f} MiB |",
            "",
        ]
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 non-reading peers")
    ap.add_argument("--output", type=Path, default=ROOT / "RESULTS-abuse.md")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        figures = trio.run(run, 10 if args.quick else 100, Path(tmp))
    text = report(figures, args.quick)
    args.output.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
