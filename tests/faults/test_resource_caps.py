"""No one client can exhaust a real relay (security review M2, M3): idle unauthenticated sockets
are capped per address apart from authenticated devices, one token subject cannot hold every
open store or create stores without bound, a peer that stops reading is dropped, and a
multi-part push is capped in bytes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from sync.helpers import open_db, ws_client
from websockets.exceptions import ConnectionClosed

from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.peer import Peer

from .attack import client_that_never_reads, rss_kib
from .conftest import RelayFactory

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

SCHEMA = {"todos": p.TableSchema(("id",), ("data", "done", "title"))}
OPTS: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.3}


async def _hello_answer(url: str, hello: p.Hello, **kw: Any) -> p.Message:
    """Send a hello; the relay's answer (it may refuse before reading the hello)."""
    async with ws_client(url, compression=None, **kw) as ws:
        try:
            await ws.send(p.encode(hello))
        except ConnectionClosed:
            pass  # refused at once: its error frame is still there to read
        with anyio.fail_after(10):
            return p.decode(await ws.recv())


async def test_idle_unauthenticated_sockets_are_capped_per_address_and_devices_get_in(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory("--max-unauthenticated-per-ip", "8", "--max-connections", "20")
    token = relay.token("s")
    async with anyio.create_task_group() as nursery:
        idle_open = anyio.Semaphore(0)
        release = anyio.Event()

        async def idle() -> None:
            # From 127.0.0.2: a WebSocket that never sends its hello.
            async with ws_client(relay.url, compression=None, local_host="127.0.0.2"):
                idle_open.release()
                await release.wait()

        for _ in range(8):
            nursery.start_soon(idle)
        for _ in range(8):
            await idle_open.acquire()
        hello = p.Hello(1, "s", os.urandom(16), SCHEMA, 0, "", token, None)
        refused = await _hello_answer(relay.url, hello, local_host="127.0.0.2")
        assert isinstance(refused, p.Error) and refused.code == "overloaded"
        assert "this address" in refused.reason
        # A device from another address is not affected.
        a = open_db(tmp_path / "a.db")
        a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x')")
        with anyio.fail_after(30):
            async with Peer(a, relay.url, store="s", token=token, **OPTS) as pa:
                await pa.wait_synced()
        release.set()


async def test_one_token_subject_cannot_hold_every_open_store(
    relay_factory: RelayFactory,
) -> None:
    relay = relay_factory("--max-open-stores", "8")  # 2 per subject
    assert relay.secret is not None
    from crsync_relay.auth import issue_token

    mallory = issue_token(relay.secret, ["m*"], 3600, subject="mallory")
    bob = issue_token(relay.secret, ["bob"], 3600, subject="bob")
    async with anyio.create_task_group() as nursery:
        held = anyio.Semaphore(0)
        release = anyio.Event()

        async def hold(store: str) -> None:
            async with ws_client(relay.url, compression=None) as ws:
                await ws.send(p.encode(p.Hello(1, store, os.urandom(16), SCHEMA, 0, "", mallory)))
                msg = p.decode(await ws.recv())
                assert isinstance(msg, p.Welcome), msg
                held.release()
                await release.wait()

        for store in ("m.0", "m.1"):
            nursery.start_soon(hold, store)
        for _ in range(2):
            await held.acquire()
        third = await _hello_answer(
            relay.url, p.Hello(1, "m.2", os.urandom(16), SCHEMA, 0, "", mallory)
        )
        assert isinstance(third, p.Error) and third.code == "overloaded"
        assert "subject" in third.reason
        ok = await _hello_answer(relay.url, p.Hello(1, "bob", os.urandom(16), SCHEMA, 0, "", bob))
        assert isinstance(ok, p.Welcome)
        release.set()


async def test_store_creation_per_subject_is_rate_limited(relay_factory: RelayFactory) -> None:
    relay = relay_factory("--max-new-stores-per-minute", "5")
    token = relay.token("x*")
    answers = []
    for i in range(8):
        answers.append(
            await _hello_answer(
                relay.url, p.Hello(1, f"x.{i}", os.urandom(16), SCHEMA, 0, "", token)
            )
        )
    assert [isinstance(a, p.Welcome) for a in answers] == [True] * 5 + [False] * 3
    assert all(isinstance(a, p.Error) and a.code == "overloaded" for a in answers[5:])
    assert len(list(relay.data_dir.glob("x.*.store.sqlite3"))) == 5
    # an existing store is never refused by the creation rate
    again = await _hello_answer(relay.url, p.Hello(1, "x.0", os.urandom(16), SCHEMA, 0, "", token))
    assert isinstance(again, p.Welcome)


@pytest.mark.slow
async def test_a_peer_that_stops_reading_is_dropped_and_its_memory_freed(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay = relay_factory("--send-timeout", "2")
    token = relay.token("big")
    a = open_db(tmp_path / "a.db")
    blob = os.urandom(64 * 1024)
    with a.conn:
        a.conn.executemany(
            "INSERT INTO todos (id, data) VALUES (?, ?)", ((f"r{i}", blob) for i in range(300))
        )
    with anyio.fail_after(60):
        async with Peer(a, relay.url, store="big", token=token, **OPTS) as pa:
            await pa.wait_synced()
    assert relay.proc is not None
    hello = p.encode(p.Hello(1, "big", os.urandom(16), SCHEMA, 0, "", token))
    rss = []
    for wave in range(1, 4):
        # Three peers that never read: each holds a ~19 MiB catch-up send until dropped.
        stalled = [client_that_never_reads(relay.port, hello) for _ in range(3)]
        try:
            with anyio.fail_after(30):
                # The relay's own send timeout is what this waits for, then for the relay to
                # have closed those connections (measuring before would count what they
                # still hold, as under load).
                while relay.count(r"relay\.peer_dropped") < 3 * wave:  # noqa: ASYNC110
                    await anyio.sleep(0.1)
        finally:
            for sock in stalled:
                sock.close()
        rss.append(rss_kib(relay.proc.pid))
    # What a dropped peer held is released: later waves reuse it instead of adding to it (the
    # review saw each non-reading peer keep its memory for good).
    assert rss[2] - rss[0] < 32 * 1024, rss
    # The store's one 19 MiB version reaches a new device in parts (one atomic unit).
    b = open_db(tmp_path / "b.db")
    with anyio.fail_after(60):
        async with Peer(b, relay.url, store="big", token=token, **OPTS) as pb:
            await pb.wait_synced()
    assert b.conn.execute("SELECT count(*) FROM todos").fetchone()[0] == 300


async def test_multi_part_push_is_capped_in_bytes(relay_factory: RelayFactory) -> None:
    relay = relay_factory("--max-unit-bytes", str(256 * 1024))
    token = relay.token("u")
    site = os.urandom(16)
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, "u", site, SCHEMA, 0, "", token)))
        assert isinstance(p.decode(await ws.recv()), p.Welcome)
        answer = None
        try:
            for i in range(10):
                row = Change("todos", pack_pk([f"k{i}"]), "data", b"x" * 60_000, 1, 1, site, 1, 0)
                part = [row]
                await ws.send(p.encode(p.Push(1, 0, 1, part, True)))
        except ConnectionClosed:
            pass  # the relay refused and closed while parts were still going out
        try:
            with anyio.fail_after(10):
                answer = p.decode(await ws.recv())  # the error frame, received before the close
        except ConnectionClosed:
            pass
    assert isinstance(answer, p.Error) and answer.code == "invalid_changes", answer
    assert "bytes" in answer.reason


async def test_process_cap_counts_authenticated_connections(relay_factory: RelayFactory) -> None:
    relay = relay_factory("--max-connections", "2")
    token = relay.token("s")
    async with anyio.create_task_group() as nursery:
        held = anyio.Semaphore(0)
        release = anyio.Event()

        async def hold() -> None:
            async with ws_client(relay.url, compression=None) as ws:
                await ws.send(p.encode(p.Hello(1, "s", os.urandom(16), SCHEMA, 0, "", token)))
                assert isinstance(p.decode(await ws.recv()), p.Welcome)
                held.release()
                await release.wait()

        for _ in range(2):
            nursery.start_soon(hold)
        for _ in range(2):
            await held.acquire()
        hello = p.Hello(1, "s", os.urandom(16), SCHEMA, 0, "", token)
        third = await _hello_answer(relay.url, hello)
        assert isinstance(third, p.Error) and third.code == "overloaded"
        assert "the relay serves 2 connections" in third.reason
        release.set()


async def test_stores_one_subject_may_create_are_capped(relay_factory: RelayFactory) -> None:
    relay = relay_factory("--max-stores-per-subject", "3")
    assert relay.secret is not None
    from crsync_relay.auth import issue_token

    mallory = issue_token(relay.secret, ["m*"], 3600, subject="mallory")
    bob = issue_token(relay.secret, ["bob"], 3600, subject="bob")

    async def hello(store: str, token: str) -> p.Message:
        return await _hello_answer(
            relay.url, p.Hello(1, store, os.urandom(16), SCHEMA, 0, "", token)
        )

    made = [await hello(f"m.{i}", mallory) for i in range(5)]
    assert [isinstance(m, p.Welcome) for m in made] == [True, True, True, False, False]
    assert isinstance(made[3], p.Error) and "created 3 stores" in made[3].reason
    assert isinstance(await hello("m.0", mallory), p.Welcome)  # its existing stores still open
    assert isinstance(await hello("bob", bob), p.Welcome)  # other subjects are not affected
    assert not relay.store_path("m.3").exists()
