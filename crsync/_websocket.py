"""The peer's WebSocket client connection, on asyncio or trio.

``websockets`` ships an asyncio and a trio implementation over one sans-I/O core; the running
event loop (``sniffio``) picks one. :func:`connect` opens a connection and closes it when the
block is left; :class:`Connection` is all the peer uses of it (send, receive, iterate). However
the connection ends, a closed or broken connection raises ``websockets``'
:class:`~websockets.exceptions.ConnectionClosed` (whose ``rcvd`` is the close frame the relay
sent, if any), on both backends. What fails while connecting is left as it is (``OSError``,
``ssl.SSLError``, ``TimeoutError``, ``InvalidHandshake``...): the peer classifies it.
"""

from __future__ import annotations

import contextlib
import ssl as ssl_module
from collections.abc import AsyncIterator
from typing import Any, Protocol

import sniffio
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidURI,
)

from .errors import RelayURLError

Data = str | bytes


class _WebSocket(Protocol):
    async def send(self, message: Data) -> None: ...
    async def recv(self) -> Data: ...


class Connection:
    """An open WebSocket connection (see the module's docstring for its errors)."""

    def __init__(self, ws: _WebSocket, broken: tuple[type[BaseException], ...] = ()) -> None:
        self._ws = ws
        self._broken = broken  # the backend's own stream errors, raised as ConnectionClosed

    async def send(self, message: bytes) -> None:
        try:
            await self._ws.send(message)
        except self._broken as exc:
            raise ConnectionClosedError(None, None) from exc

    async def recv(self) -> Data:
        try:
            return await self._ws.recv()
        except self._broken as exc:
            raise ConnectionClosedError(None, None) from exc

    def __aiter__(self) -> Connection:
        return self

    async def __anext__(self) -> Data:
        """The next message; a normal close ends the iteration."""
        try:
            return await self.recv()
        except ConnectionClosedOK:
            raise StopAsyncIteration from None


@contextlib.asynccontextmanager
async def connect(
    url: str, *, ssl: ssl_module.SSLContext | None, max_size: int, open_timeout: float
) -> AsyncIterator[Connection]:
    """Open a WebSocket to ``url`` (no proxy, no compression), within ``open_timeout``.

    Raises:
        RelayURLError: ``websockets`` refuses the URL.
    """
    options: dict[str, Any] = {
        "max_size": max_size,
        "proxy": None,
        "open_timeout": open_timeout,
        "compression": None,
    }
    if ssl is not None:
        options["ssl"] = ssl
    if sniffio.current_async_library() == "trio":
        import trio
        from websockets.trio.client import connect as trio_connect

        try:
            cm = trio_connect(url, **options)
        except (InvalidURI, ValueError) as exc:
            raise RelayURLError(f"invalid relay URL {url!r}: {exc}") from None
        async with cm as ws:
            yield Connection(ws, (trio.BrokenResourceError, trio.ClosedResourceError))
        return

    from websockets.asyncio.client import connect as asyncio_connect

    try:
        opening = asyncio_connect(url, **options)
    except (InvalidURI, ValueError) as exc:
        raise RelayURLError(f"invalid relay URL {url!r}: {exc}") from None
    aws = await opening
    try:
        yield Connection(aws)
    finally:
        try:
            await aws.close()
        finally:
            # Cancelled (or failed) while closing: do not leave the socket to the relay.
            aws.transport.abort()


__all__ = ["Connection", "ConnectionClosed", "connect"]
