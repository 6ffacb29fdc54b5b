"""What a client without a token can make a real relay do (security review H1, L1, L5).

Before authentication the relay reads only a small hello: an oversized or expanding frame is
refused before it is decoded (or decoded within a small bound), costs bounded memory, does not
stall other connections, and nothing it sent is copied into logs or error frames unbounded.
"""

from __future__ import annotations

import os
import time

import anyio
import msgpack
import pytest
from anyio.streams.memory import MemoryObjectSendStream
from sync.conftest import RelayProcess
from sync.helpers import ws_client
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from crsync import protocol as p

from .attack import expanding_hello, rss_kib
from .conftest import RelayFactory

# Only the relay process is under test here (raw WebSocket clients, no Peer): these tests run
# on trio alone, asyncio would repeat the same checks against the same relay.
pytestmark = pytest.mark.e2e

SCHEMA = {"todos": p.TableSchema(("id",), ("title",))}


async def _honest_pinger(
    url: str, token: str, stop: anyio.Event, gaps: MemoryObjectSendStream[float]
) -> None:
    """An authenticated peer on another store pinging in a loop; records each round trip."""
    async with ws_client(url, max_size=None, compression=None) as ws:
        await ws.send(p.encode(p.Hello(1, "honest", os.urandom(16), SCHEMA, 0, "", token)))
        assert isinstance(p.decode(await ws.recv()), p.Welcome)
        i = 0
        while not stop.is_set():
            i += 1
            t0 = time.monotonic()
            await ws.send(p.encode(p.Ping(i)))
            while True:
                msg = p.decode(await ws.recv())
                if isinstance(msg, p.Pong) and msg.id == i:
                    break
            await gaps.send(time.monotonic() - t0)
            await anyio.sleep(0.01)  # pacing of the honest load, not a synchronisation


async def _send_unauthenticated(url: str, frame: bytes) -> str:
    """Send one frame without a token; what the relay answered (error code, or 'closed CODE')."""
    try:
        async with ws_client(url, max_size=None, compression=None) as ws:
            await ws.send(frame)
            msg = p.decode(await ws.recv())
            assert isinstance(msg, p.Error)
            return msg.code
    except ConnectionClosed as exc:
        return f"closed {exc.rcvd.code if exc.rcvd else None}"


@pytest.mark.parametrize("size", [200 * 1024, 16 * 1024 * 1024])
async def test_unauthenticated_expanding_frame_costs_bounded_memory_and_never_stalls_others(
    relay: RelayProcess, size: int
) -> None:
    assert relay.proc is not None
    before = rss_kib(relay.proc.pid)
    gaps: list[float] = []
    stop = anyio.Event()
    send, receive = anyio.create_memory_object_stream[float](10_000)

    async def attack() -> str:
        with anyio.fail_after(10):
            return await _send_unauthenticated(relay.url, expanding_hello(size))

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(_honest_pinger, relay.url, relay.token("honest"), stop, send)
        for _ in range(5):  # the honest peer is in its loop
            await receive.receive()
        answers: list[str] = []

        async def run_attack() -> None:
            answers.append(await attack())

        async with anyio.create_task_group() as inner:
            inner.start_soon(run_attack)
            # round trips measured while the attack is under way, and 5 after
            while not answers:
                gaps.append(await receive.receive())
        peak = rss_kib(relay.proc.pid)
        for _ in range(5):
            gaps.append(await receive.receive())
        stop.set()  # the channel's buffer holds the pinger's last round trips
    answer = answers[0]
    # A small frame is decoded and refused as a bad hello; a large one never gets decoded.
    assert answer in {"bad_frame", "frame_too_large", "closed 1009"}
    assert (peak - before) < 48 * 1024, f"relay RSS grew by {(peak - before) // 1024} MiB"
    assert max(gaps) < 1.0, f"an honest peer waited {max(gaps):.2f} s for a pong"


async def test_frames_just_over_the_hello_cap_are_refused_without_decoding(
    relay: RelayProcess,
) -> None:
    frame = expanding_hello(p.MAX_HELLO_BYTES + 1024)
    with anyio.fail_after(10):
        answer = await _send_unauthenticated(relay.url, frame)
    assert answer == "frame_too_large"


async def test_refusals_quote_attacker_strings_truncated_in_log_and_error_frame(
    relay: RelayProcess,
) -> None:
    huge = "A" * (200 * 1024)
    frames = [
        p.encode(p.Hello(1, huge, os.urandom(16), SCHEMA, 0, "", None)),
        msgpack.packb({"t": huge}),
    ]
    reasons = []
    for frame in frames:
        async with ws_client(relay.url, max_size=None, compression=None) as ws:
            await ws.send(frame)
            msg = p.decode(await ws.recv())
            assert isinstance(msg, p.Error)
            reasons.append((msg.code, msg.reason))
    assert [code for code, _ in reasons] == ["bad_store", "unknown_type"]
    assert all(len(reason) < 600 for _, reason in reasons), reasons
    with anyio.fail_after(10):
        while relay.count(r"relay\.(refused|protocol_error)") < 2:  # noqa: ASYNC110
            await anyio.sleep(0.02)  # the log reader thread catches up
    assert max(len(line) for line in relay.lines) < 2000


async def test_dev_relay_refuses_browser_origins(relay_factory: RelayFactory) -> None:
    relay = relay_factory(dev=True)
    hello = p.encode(p.Hello(1, "alice", os.urandom(16), SCHEMA, 0, "", None))
    # A web page's WebSocket always carries an Origin header: refused at the handshake.
    with pytest.raises(InvalidHandshake) as info:
        async with ws_client(
            relay.url, origin="https://evil.example", compression=None  # type: ignore[arg-type]
        ) as ws:
            await ws.send(hello)
            await ws.recv()
    assert isinstance(info.value, InvalidStatus)
    assert info.value.response.status_code == 403
    # Programs (no Origin header) still connect.
    async with ws_client(relay.url, compression=None) as ws:
        await ws.send(hello)
        assert isinstance(p.decode(await ws.recv()), p.Welcome)
