"""One peer connection on the relay: handshake, pushes and acks, catch-up and live changes."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

import attrs
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection

from crsync import protocol as p
from crsync._trio_util import open_nursery
from crsync.change import Change
from crsync.errors import AuthError, InvalidChangeError, ProtocolError

from .auth import verify_token
from .hub import BadStoreId, Hub, Overloaded, QuotaExceeded, StoreHandle, check_store_id

log = logging.getLogger(__name__)

OFFLOAD_DECODE_BYTES = 256 * 1024
"""Frames larger than this are decoded in a worker thread, off the event loop."""


@attrs.define
class ConnectionLimits:
    """Caps on open connections: for the whole process (counted from the WebSocket handshake,
    so unauthenticated connections count too) and per store (counted once the token is checked).
    A connection over a cap is refused with ``overloaded`` (peers retry with backoff); a store at
    its cap does not affect other stores."""

    max_total: int = 10_000
    max_per_store: int = 1_000
    total: int = 0
    per_store: dict[str, int] = attrs.Factory(dict)

    def enter(self) -> None:
        """Count a new connection, or raise :class:`_Closing` (overloaded) at the cap."""
        if self.total >= self.max_total:
            raise _Closing(
                p.ErrorCode.OVERLOADED.value,
                f"the relay serves {self.total} connections (the cap is {self.max_total})",
            )
        self.total += 1

    def leave(self) -> None:
        """A connection counted by :meth:`enter` ended."""
        self.total -= 1

    def enter_store(self, store: str) -> None:
        """Count a connection to ``store``, or raise :class:`_Closing` (overloaded) at the cap."""
        n = self.per_store.get(store, 0)
        if n >= self.max_per_store:
            raise _Closing(
                p.ErrorCode.OVERLOADED.value,
                f"store {store!r} has {n} connections (the cap is {self.max_per_store})",
            )
        self.per_store[store] = n + 1

    def leave_store(self, store: str) -> None:
        """A connection counted by :meth:`enter_store` ended."""
        n = self.per_store.pop(store) - 1
        if n:
            self.per_store[store] = n


@attrs.define
class RelaySettings:
    """What a connection handler needs to know about the relay's configuration."""

    secret: bytes | None  # None: dev mode, no auth
    max_frame: int = p.DEFAULT_MAX_FRAME
    handshake_timeout: float = 10.0
    batch_cells: int = 5000
    max_unit_cells: int = 2_000_000  # cap on a multi-part push held in memory
    limits: ConnectionLimits = attrs.Factory(ConnectionLimits)
    # Worker threads decoding large frames at once, for the whole relay.
    decode_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(2))


class _Closing(Exception):
    """Stop this connection after sending an error frame."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Session:
    """State of one authenticated peer connection."""

    def __init__(
        self,
        ws: ServerConnection,
        hub: Hub,
        settings: RelaySettings,
        hello: p.Hello,
        handle: StoreHandle,
        cursor: int,
    ) -> None:
        self.ws = ws
        self.hub = hub
        self.settings = settings
        self.hello = hello
        self.site = hello.site
        self.handle = handle
        self.sent_upto = cursor
        self.send_lock = trio.Lock()
        self.log = logging.LoggerAdapter(log, {"store": hello.store, "site": hello.site.hex()})

    async def send(self, msg: p.Message) -> None:
        async with self.send_lock:
            await self.ws.send(p.encode(msg))

    async def sender(self) -> None:
        """Send the store's changes the peer lacks, forever: catch-up, then live."""
        h = self.handle
        while True:
            if self.sent_upto >= h.head:
                await h.changed.wait()
                continue
            changes, upto, _complete = await self.hub.read(
                h, self.sent_upto, self.site, self.settings.batch_cells
            )
            base = self.sent_upto
            parts = p.split_frames(changes, self.settings.batch_cells, self.settings.max_frame // 2)
            for i, part in enumerate(parts):
                await self.send(p.Changes(base, upto, part, i < len(parts) - 1))
                self.hub.metrics.changes_sent.inc(len(part))
            self.sent_upto = upto

    async def receiver(self, proto: p.RelayConnection) -> None:
        """Handle what the peer sends until it closes."""
        parts: list[Change] = []
        async for raw in self.ws:
            if len(raw) > OFFLOAD_DECODE_BYTES:
                # Decoding and validating a large push takes long: do it in a worker thread
                # so other connections are served meanwhile (a few at a time).
                msg = await trio.to_thread.run_sync(
                    proto.receive, raw, limiter=self.settings.decode_limiter
                )
            else:
                msg = proto.receive(raw)
            if isinstance(msg, p.Push):
                parts.extend(msg.changes)
                if len(parts) > self.settings.max_unit_cells:
                    raise _Closing(
                        p.ErrorCode.INVALID_CHANGES.value,
                        "a multi-part push is larger than this relay accepts",
                    )
                if msg.more:
                    continue
                unit, parts = parts, []
                try:
                    # Under the store's push rate limit this waits (backpressure: the peer
                    # waits for its ack) rather than refusing; over its byte quota it refuses.
                    head, wins = await self.hub.push(
                        self.handle, self.site, msg.upto, unit, limited=True
                    )
                except InvalidChangeError as exc:
                    raise _Closing(p.ErrorCode.INVALID_CHANGES.value, str(exc)) from None
                except QuotaExceeded as exc:
                    raise _Closing(p.ErrorCode.QUOTA_EXCEEDED.value, str(exc)) from None
                self.log.debug(
                    "relay.push store=%s cells=%d wins=%d head=%d",
                    self.hello.store,
                    len(unit),
                    wins,
                    head,
                )
                await self.send(p.Ack(msg.batch, msg.upto, head))
            elif isinstance(msg, p.Received):
                await self.hub.record_received(self.handle, self.site, msg.upto)
            elif isinstance(msg, p.Ping):
                await self.send(p.Pong(msg.id, self.handle.head))


async def _send_error(ws: ServerConnection, code: str, reason: str, hub: Hub) -> None:
    hub.metrics.errors.labels(code=code).inc()
    try:
        with trio.move_on_after(5):
            await ws.send(p.encode(p.Error(code, reason)))
            await ws.aclose(1008 if code != p.ErrorCode.INTERNAL.value else 1011, code)
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def handle_connection(ws: ServerConnection, hub: Hub, settings: RelaySettings) -> None:
    """Serve one peer connection; errors end this connection only."""
    proto = p.RelayConnection(settings.max_frame)
    handle: StoreHandle | None = None
    peer = getattr(ws, "remote_address", None)
    limits = settings.limits
    counted = counted_store = False
    try:
        limits.enter()
        counted = True
        with trio.fail_after(settings.handshake_timeout):
            raw = await ws.recv()
        hello = proto.receive(raw)
        assert isinstance(hello, p.Hello)
        try:
            check_store_id(hello.store)
        except BadStoreId as exc:
            raise _Closing(p.ErrorCode.BAD_STORE.value, str(exc)) from None
        if settings.secret is not None:
            try:
                claims = verify_token(settings.secret, hello.token)
            except AuthError as exc:
                raise _Closing(getattr(exc, "code", "unauthorized"), str(exc)) from None
            if not claims.allows(hello.store):
                raise _Closing(
                    p.ErrorCode.FORBIDDEN.value,
                    f"the token does not grant access to store {hello.store!r}",
                )
        # Authenticated: from now on frames up to twice the limit are read (so that the protocol
        # can refuse an oversized one with frame_too_large); before, the server's small
        # handshake limit applies.
        ws.protocol.max_message_size = 2 * settings.max_frame
        limits.enter_store(hello.store)
        counted_store = True
        try:
            handle = await hub.acquire(hello.store)
        except Overloaded as exc:
            raise _Closing(p.ErrorCode.OVERLOADED.value, str(exc)) from None
        await hub.charge(handle)
        async with handle.write_lock:
            if hello.site == await trio.to_thread.run_sync(handle.writer.relay_site):
                raise _Closing(
                    p.ErrorCode.FORBIDDEN.value,
                    "this site id is the relay's own (its reactor's); a device cannot use it",
                )
            claim = await trio.to_thread.run_sync(
                handle.writer.bind_site, hello.site, hello.site_key
            )
            if claim is not None:
                raise _Closing(p.ErrorCode.SITE_FORBIDDEN.value, claim)
            problem = await trio.to_thread.run_sync(handle.writer.check_schema, dict(hello.schema))
            position = await trio.to_thread.run_sync(handle.writer.peer, hello.site)
        if problem is not None:
            raise _Closing(p.ErrorCode.SCHEMA_MISMATCH.value, problem)
        same_epoch = hello.epoch == handle.epoch
        cursor = hello.cursor if same_epoch and hello.cursor <= handle.head else 0
        acked = position.pushed_upto if same_epoch else 0
        session = Session(ws, hub, settings, hello, handle, cursor)
        await session.send(p.Welcome(p.PROTOCOL_VERSION, handle.epoch, handle.head, acked))
        session.log.info(
            "relay.connect store=%s site=%s cursor=%d head=%d epoch_match=%s",
            hello.store,
            hello.site.hex(),
            cursor,
            handle.head,
            same_epoch,
        )
        handle.sessions += 1
        hub.metrics.connections.inc()
        hub.metrics.connections_active.inc()
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(session.sender)
                await session.receiver(proto)
                nursery.cancel_scope.cancel()
        finally:
            handle.sessions -= 1
            hub.metrics.connections_active.dec()
    except _Closing as exc:
        reason = _cap(exc.reason)
        log.warning("relay.refused peer=%s code=%s reason=%s", peer, exc.code, reason)
        await _send_error(ws, exc.code, reason, hub)
    except ProtocolError as exc:
        reason = _cap(exc.reason)
        log.warning("relay.protocol_error peer=%s code=%s reason=%s", peer, exc.code, reason)
        await _send_error(ws, exc.code, reason, hub)
    except TooSlow:
        await _send_error(
            ws, p.ErrorCode.BAD_FRAME.value, "no hello within the handshake timeout", hub
        )
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except sqlite3.Error as exc:
        # Disk full, read-only or failing storage: nothing of the unit was committed, so
        # nothing was acknowledged; the peer retries (with backoff) and succeeds once the
        # storage recovers.
        store = proto.hello.store if proto.hello is not None else "-"
        log.error("relay.store_write_failed peer=%s store=%s error=%s", peer, store, exc)
        await _send_error(
            ws,
            p.ErrorCode.INTERNAL.value,
            f"the relay could not write store {store!r} ({exc}); nothing was stored, retry later",
            hub,
        )
    except Exception as exc:
        log.exception("relay.internal_error peer=%s", peer)
        await _send_error(
            ws, p.ErrorCode.INTERNAL.value, f"internal error: {type(exc).__name__}", hub
        )
    finally:
        if handle is not None:
            hub.release(handle)
        if counted_store:
            assert proto.hello is not None
            limits.leave_store(proto.hello.store)
        if counted:
            limits.leave()


TooSlow = trio.TooSlowError
MAX_REASON = 500


def _cap(reason: str) -> str:
    """An error reason cut to a bounded length for the log and the error frame (reasons quote
    what peers sent; every quote is already bounded, this bounds their sum)."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


def describe(handle: StoreHandle) -> dict[str, Any]:
    """Live figures of an open store (for status pages)."""
    return {"store": handle.store_id, "head": handle.head, "sessions": handle.sessions}
