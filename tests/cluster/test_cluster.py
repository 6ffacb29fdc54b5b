"""Three relay nodes on one PostgreSQL behind nginx (a real WebSocket load balancer), 20 devices
writing to 30 stores at once (every device holds two stores' files, ten stores are shared by two
devices): ``kill -9`` of a node mid-traffic and a PostgreSQL restart lose no acknowledged
change, and everything converges within a bounded time."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest
import trio
from store.pg_server import PrivatePostgres
from sync.helpers import open_db, snapshot

import crsync
from crsync.peer import Peer

from .conftest import NodeFactory

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STORES = 30
DEVICES = 20
# (device, store) pairs, one database file and one Peer each: device i holds store i % 10
# (shared with device i +/- 10) and store 10 + i (its own): 30 stores, 40 writers.
MEMBERS = [(i, i % 10) for i in range(DEVICES)] + [(i, 10 + i) for i in range(DEVICES)]
FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
CONVERGE_SECONDS = 20.0


class Writers:
    """Acknowledged writes per device; waits on their count (a condition, no sleeps)."""

    def __init__(self, n: int) -> None:
        self.acked: list[list[str]] = [[] for _ in range(n)]
        self.cond = trio.Condition()
        self.stop = trio.Event()

    async def wait_each(self, count: int) -> None:
        async with self.cond:
            while min(len(a) for a in self.acked) < count:
                await self.cond.wait()

    async def wait_beyond(self, counts: list[int]) -> None:
        """Until every device acknowledged a write beyond ``counts``."""
        async with self.cond:
            while any(len(a) <= c for a, c in zip(self.acked, counts, strict=True)):
                await self.cond.wait()

    async def write(self, i: int, db: crsync.Database, peer: Peer) -> None:
        k = 0
        while not self.stop.is_set():
            row = f"d{i}-{k}"
            db.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'w')", (row,))
            await peer.wait_synced()  # acknowledged: committed in PostgreSQL
            k += 1
            async with self.cond:
                self.acked[i].append(row)
                self.cond.notify_all()


async def test_nodes_behind_nginx_survive_a_node_kill_and_a_postgres_restart(
    nodes: NodeFactory,
    balancer: object,
    pg_server: PrivatePostgres,
    tmp_path: Path,
) -> None:
    relays = [nodes("--log-level", "info") for _ in range(3)]
    lb = balancer([r.port for r in relays])  # type: ignore[operator]
    n = len(MEMBERS)
    assert len({s for _, s in MEMBERS}) == STORES and len({d for d, _ in MEMBERS}) == DEVICES
    dbs = [open_db(tmp_path / f"dev{d}-s{s}.db") for d, s in MEMBERS]
    store_of = [f"s{s}" for _, s in MEMBERS]
    w = Writers(n)
    with trio.fail_after(120):
        async with contextlib.AsyncExitStack() as stack:
            ps = [
                await stack.enter_async_context(Peer(db, lb.url, store=s, **FAST))  # type: ignore[arg-type]
                for db, s in zip(dbs, store_of, strict=True)
            ]
            async with trio.open_nursery() as nursery:
                for i in range(n):
                    nursery.start_soon(w.write, i, dbs[i], ps[i])
                await w.wait_each(3)
                victim = max(relays, key=lambda r: r.count(r"relay\.connect "))
                counts = [len(a) for a in w.acked]
                started = time.monotonic()
                victim.kill()  # kill -9, mid-traffic
                killed_at = sum(counts)
                await w.wait_beyond(counts)
                failover = time.monotonic() - started
                await w.wait_each(7)  # every writer acknowledged writes after the kill
                await trio.to_thread.run_sync(pg_server.stop)
                pg_server.start()  # main thread: see PrivatePostgres.start (blocks briefly)
                await w.wait_each(11)  # and after the PostgreSQL restart
                w.stop.set()
            written_at = time.monotonic()
            assert sum(len(a) for a in w.acked) > killed_at
            assert any(p.stats.connects >= 2 for p in ps), "nobody was on the killed node"
            # Convergence: every device of a store holds what every device of it wrote.
            # Two rounds, every peer at once: the second starts once every push of the first
            # is acknowledged, so it pulls what the others pushed.
            for _ in range(2):
                async with trio.open_nursery() as nursery:
                    for p in ps:
                        nursery.start_soon(p.wait_synced)
            converged = time.monotonic() - written_at
    print(f"failover {failover:.2f} s; converged {converged:.2f} s after the last write")
    assert failover < CONVERGE_SECONDS
    assert converged < CONVERGE_SECONDS
    shared = 0
    for s in sorted(set(store_of)):
        members = [i for i in range(n) if store_of[i] == s]
        first = snapshot(dbs[members[0]])
        for i in members[1:]:
            shared += 1
            assert snapshot(dbs[i]) == first, f"devices of {s} differ"
    assert shared == 10
    # Zero acknowledged changes lost: a fresh device of each store gets every acked row.
    survivors = [r for r in relays if r is not victim]
    have: dict[str, set[str]] = {}

    async def fetch(s: str) -> None:
        fresh = open_db(tmp_path / f"fresh-{s}.db")
        async with Peer(fresh, lb.url, store=s, **FAST) as pf:  # type: ignore[arg-type]
            await pf.wait_synced()
        have[s] = {r[0] for r in fresh.conn.execute("SELECT id FROM todos")}
        fresh.close()

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for s in sorted(set(store_of)):
                nursery.start_soon(fetch, s)
    for i in range(n):
        lost = set(w.acked[i]) - have[store_of[i]]
        assert not lost, f"acknowledged writes of writer {MEMBERS[i]} lost: {sorted(lost)[:5]}"
    assert all(r.proc is not None and r.proc.poll() is None for r in survivors)


def test_the_deploy_nginx_config_is_valid_nginx(tmp_path: Path, balancer: object) -> None:
    """server/deploy's nginx file, included in an ``http`` block, passes ``nginx -t`` (its
    certificate paths replaced by a throwaway self-signed pair)."""
    import shutil
    import subprocess

    from .nginx import find_nginx

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    deploy = Path(__file__).parents[2] / "server" / "deploy" / "nginx-crsync-relay-cluster.conf"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
         "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    text = deploy.read_text()
    text = text.replace("/etc/letsencrypt/live/sync.example.com/fullchain.pem", str(cert))
    text = text.replace("/etc/letsencrypt/live/sync.example.com/privkey.pem", str(key))
    assert "proxy_http_version 1.1;" in text and "$connection_upgrade" in text
    site = tmp_path / "site.conf"
    site.write_text(text)
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        "events { worker_connections 64; }\n"
        f"http {{ client_body_temp_path {tmp_path}/b; proxy_temp_path {tmp_path}/p; "
        f"fastcgi_temp_path {tmp_path}/f; uwsgi_temp_path {tmp_path}/u; "
        f"scgi_temp_path {tmp_path}/s; include {site}; }}\n"
    )
    res = subprocess.run(
        [find_nginx(), "-t", "-p", str(tmp_path), "-c", str(main)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
