"""Hostile clients against a real relay: each gets an error frame with a stable code and is
disconnected, while honest peers on another store keep syncing and lose nothing."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
from crsync_relay.store import RelayStore
from websockets.exceptions import ConnectionClosed

import crsync
from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.peer import Peer

from .conftest import RelayFactory, RelayProcess
from .helpers import open_db, rows, ws_client

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

MAX_FRAME = 64 * 1024
SITE = os.urandom(16)
SCHEMA = {"todos": p.TableSchema(("id",), ("data", "done", "title"))}


def hello(token: str | None, store: str = "evil", version: int = p.PROTOCOL_VERSION) -> bytes:
    return p.encode(p.Hello(version, store, SITE, SCHEMA, 0, "", token))


def raw(body: Any) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def bad_push(row: list[Any]) -> bytes:
    return raw({"t": "push", "batch": 1, "base": 0, "upto": 1, "more": False, "changes": [row]})


GOOD_ROW = ["todos", pack_pk(["k"]), "title", "v", 1, 1, SITE, 1, 0]

Frames = Callable[[str], list[bytes | str]]

CASES: dict[str, tuple[Frames, str]] = {
    "garbage": (lambda t: [b"\x00\xff\xc1garbage"], "bad_frame"),
    "text-frame": (lambda t: ['{"t": "hello"}'], "bad_frame"),
    "not-a-map": (lambda t: [raw([1, 2, 3])], "bad_frame"),
    "unknown-type": (lambda t: [raw({"t": "hack", "x": 1})], "unknown_type"),
    "oversized": (lambda t: [b"\x00" * (MAX_FRAME + 1)], "frame_too_large"),
    "wrong-version": (lambda t: [hello(t, version=99)], "unsupported_version"),
    "push-before-hello": (lambda t: [p.encode(p.Push(1, 0, 1, []))], "unexpected_message"),
    "hello-missing-site": (
        lambda t: [raw({"t": "hello", "v": 1, "store": "evil", "cursor": 0, "epoch": ""})],
        "bad_frame",
    ),
    "bad-store": (lambda t: [hello(t, store="../good")], "bad_store"),
    "schema-mismatch": (
        lambda t: [
            p.encode(p.Hello(1, "good", SITE, {"todos": p.TableSchema(("x", "y"), ())}, 0, "", t))
        ],
        "schema_mismatch",
    ),
    "garbage-after-hello": (lambda t: [hello(t), b"\xc1"], "bad_frame"),
    "second-hello": (lambda t: [hello(t), hello(t)], "unexpected_message"),
    "ack-from-peer": (lambda t: [hello(t), p.encode(p.Ack(1, 1, 1))], "unexpected_message"),
    "invalid-change-row": (
        lambda t: [hello(t), bad_push([*GOOD_ROW[:6], b"short", 1, 0])],
        "invalid_changes",
    ),
    "nine-fields-missing": (lambda t: [hello(t), bad_push(GOOD_ROW[:5])], "invalid_changes"),
    "undecodable-pk": (
        lambda t: [hello(t), bad_push(["todos", b"\x09\x99", *GOOD_ROW[2:]])],
        "invalid_changes",
    ),
    "pk-wrong-arity": (
        lambda t: [hello(t), bad_push(["todos", pack_pk(["a", "b"]), *GOOD_ROW[2:]])],
        "invalid_changes",
    ),
    "oversized-after-hello": (
        lambda t: [
            hello(t),
            p.encode(
                p.Push(
                    1,
                    0,
                    1,
                    [Change("todos", pack_pk(["k"]), "data", b"x" * MAX_FRAME, 1, 1, SITE, 1, 0)],
                )
            ),
        ],
        "frame_too_large",
    ),
}


async def attack(url: str, frames: list[bytes | str]) -> tuple[p.Error, int | None]:
    """Send frames; return the relay's error frame and the close code that followed it."""
    async with ws_client(url, proxy=None, max_size=None, compression=None) as ws:
        for f in frames:
            try:
                await ws.send(f)
            except ConnectionClosed:
                break
        error = None
        try:
            while True:
                msg = p.decode(await ws.recv())
                if isinstance(msg, p.Error):
                    error = msg
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
        assert error is not None, f"no error frame before close (code {code})"
        return error, code


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    return relay_factory("--max-frame-bytes", str(MAX_FRAME))


async def _honest_round(
    g1: Peer, g2: Peer, a: crsync.Database, b: crsync.Database, key: str
) -> None:
    a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'honest')", (key,))
    await g1.wait_synced()
    await g2.wait_synced()
    assert (key, "honest", 0, None) in rows(b)


@pytest.mark.parametrize("case", list(CASES))
async def test_hostile_frame_gets_error_and_close_while_others_sync(
    relay: RelayProcess, tmp_path: Path, case: str
) -> None:
    make_frames, code = CASES[case]
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    token_good, token_evil = relay.token("good"), relay.token("evil", "good")
    opts: dict[str, Any] = {"store": "good", "token": token_good, "backoff_max": 0.5}
    with anyio.fail_after(30):
        async with Peer(a, relay.url, **opts) as g1, Peer(b, relay.url, **opts) as g2:
            await _honest_round(g1, g2, a, b, "before")
            error, close_code = await attack(relay.url, make_frames(token_evil))
            assert error.code == code, error
            assert error.reason
            assert close_code == 1008
            # the honest peers were not disturbed and keep syncing
            await _honest_round(g1, g2, a, b, "after")
            assert g1.stats.connects == g2.stats.connects == 1
    assert rows(a) == rows(b)
    store = RelayStore(relay.store_path("good"), create=False)
    titles = store.conn.execute("SELECT count(*) FROM relay_cells WHERE val = 'honest'")
    assert titles.fetchone() == (2,)
    evil = relay.store_path("evil")
    if evil.exists():  # nothing of a refused push was stored
        s = RelayStore(evil, create=False)
        assert s.head == 0


async def test_frame_far_beyond_the_limit_is_cut_off_by_websockets(
    relay: RelayProcess,
) -> None:
    with anyio.fail_after(20):
        async with ws_client(relay.url, proxy=None, compression=None) as ws:
            # The relay may close while the frame is still being sent: the send itself can
            # then fail, and a reset can swallow the close frame.
            with pytest.raises(ConnectionClosed) as info:
                await ws.send(b"\x00" * (3 * MAX_FRAME))
                await ws.recv()
        rcvd = info.value.rcvd
        assert rcvd is None or rcvd.code == 1009
        # the relay refused that frame and keeps serving
        async with ws_client(relay.url, proxy=None, compression=None) as ws:
            await ws.send(hello(relay.token("evil")))
            assert isinstance(p.decode(await ws.recv()), p.Welcome)


async def test_half_open_connections_do_not_block_honest_peers(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Many half-open connections do not stop an honest peer from syncing."""
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    opts: dict[str, Any] = {"store": "good", "token": relay.token("good")}
    with anyio.fail_after(30):
        async with anyio.create_task_group() as nursery:
            idle = anyio.Event()

            async def lurker() -> None:
                async with ws_client(relay.url, proxy=None) as ws:
                    await ws.ping()
                    await idle.wait()

            for _ in range(20):
                nursery.start_soon(lurker)
            async with Peer(a, relay.url, **opts) as g1, Peer(b, relay.url, **opts) as g2:
                await _honest_round(g1, g2, a, b, "k")
            idle.set()
