"""A loopback TCP proxy under test control, for injecting network faults between peers and a relay.

Runs in the test's event loop (anyio: asyncio or trio). Every accepted connection is paired with
a new connection to the relay's current port (so the relay may restart on its port behind the
proxy) and two pumps copy bytes, subject to the proxy's current fault:

* ``delay``: each chunk waits up to ``delay_max`` seconds before it is forwarded (order kept);
* ``stall``: nothing is forwarded in either direction until the fault ends (bytes pile up in the
  kernel buffers, as on a congested link);
* ``cut_up`` / ``cut_down``: bytes peer->relay (or relay->peer) are discarded while the other
  direction flows; when the fault ends the affected connections are reset (the byte stream lost
  data, so it cannot continue: a real stack would time out the same way, only later);
* ``drop``: every open connection is reset, the ones carrying data mid-chunk after forwarding only
  a prefix of the chunk (so WebSocket frames are cut in the middle).

The proxy never looks at frame contents.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import attrs
from anyio.abc import SocketAttribute, SocketStream

FAULTS = ("none", "delay", "stall", "cut_up", "cut_down", "drop")


@attrs.define(eq=False)
class _Link:
    client: SocketStream
    server: SocketStream
    cancel: anyio.CancelScope = attrs.Factory(anyio.CancelScope)
    damaged: bool = False


@attrs.define
class FaultStats:
    """What the proxy did (reported in docs/reliability.md)."""

    connections: int = 0
    faults: dict[str, int] = attrs.Factory(lambda: dict.fromkeys(FAULTS, 0))
    resets: int = 0
    midchunk_cuts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


class FaultProxy:
    """``await nursery.start(proxy.serve)``; then point peers at ``proxy.url``."""

    def __init__(self, target_port: Callable[[], int], rnd: random.Random) -> None:
        self.target_port = target_port
        self.rnd = rnd
        self.port = 0
        self.fault = "none"
        self.delay_max = 0.05
        self.stats = FaultStats()
        self._links: set[_Link] = set()
        self._resume = anyio.Event()
        self._resume.set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def serve(self, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(SocketAttribute.local_port)
        async with listener, anyio.create_task_group() as tg:
            task_status.started()
            await listener.serve(self._handle, tg)

    # ------------------------------------------------------------------ control

    def set_fault(self, fault: str) -> None:
        """End the current fault and start another (``"none"``: forward faithfully)."""
        assert fault in FAULTS, fault
        ending = self.fault
        self.fault = fault
        self.stats.faults[fault] += 1
        if ending == "stall":
            self._resume.set()
        if ending in ("cut_up", "cut_down"):
            for link in list(self._links):
                if link.damaged:
                    self._reset(link)
        if fault == "stall":
            self._resume = anyio.Event()
        if fault == "drop":
            for link in list(self._links):
                self._reset(link)

    def _reset(self, link: _Link) -> None:
        self.stats.resets += 1
        link.cancel.cancel()

    # ------------------------------------------------------------------ pumps

    async def _handle(self, client: SocketStream) -> None:
        self.stats.connections += 1
        try:
            server = await anyio.connect_tcp("127.0.0.1", self.target_port())
        except OSError:
            await client.aclose()
            return
        link = _Link(client, server)
        self._links.add(link)
        try:
            with link.cancel:
                async with anyio.create_task_group() as nursery:
                    nursery.start_soon(self._pump, link, client, server, "up")
                    nursery.start_soon(self._pump, link, server, client, "down")
        finally:
            self._links.discard(link)
            for s in (client, server):
                await anyio.aclose_forcefully(s)

    async def _pump(
        self, link: _Link, src: SocketStream, dst: SocketStream, direction: str
    ) -> None:
        try:
            while True:
                data = await src.receive(65536)
                await self._resume.wait()
                fault = self.fault
                if fault == "delay":
                    await anyio.sleep(self.rnd.uniform(0, self.delay_max))  # injected latency
                elif fault == f"cut_{direction}":
                    link.damaged = True
                    continue
                elif fault == "drop" and len(data) > 1:
                    cut = self.rnd.randrange(1, len(data))
                    await dst.send(data[:cut])
                    self.stats.midchunk_cuts += 1
                    self._reset(link)
                    return
                await dst.send(data)
                if direction == "up":
                    self.stats.bytes_up += len(data)
                else:
                    self.stats.bytes_down += len(data)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        # one side closed: close the whole link (as a TCP reset would)
        link.cancel.cancel()
