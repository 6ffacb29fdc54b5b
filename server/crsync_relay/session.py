"""One peer connection on the relay: handshake, pushes and acks, catch-up and live changes."""

from __future__ import annotations

import logging
import sqlite3
import time

import attrs
import trio
from websockets.exceptions import ConnectionClosed
from websockets.trio.server import ServerConnection

from crsync import protocol as p
from crsync import relay_session as rs
from crsync._trio_util import open_nursery
from crsync.errors import InvalidChangeError, ProtocolError

from .auth import verify_token
from .datadir import check_store_id
from .hub import Hub, Overloaded, StoreHandle
from .refusal import Refusal

log = logging.getLogger(__name__)

OFFLOAD_DECODE_BYTES = 256 * 1024
"""Frames larger than this are decoded in a worker thread, off the event loop."""


@attrs.define
class ConnectionLimits:
    """Caps on open connections. Until its token is checked a connection counts as
    *unauthenticated*: capped for the whole process and per client address, so that idle
    sockets cannot take the places of authenticated devices. Authenticated connections are
    capped for the process and per store. A connection over a cap is refused with
    ``overloaded`` (peers retry with backoff); a store at its cap does not affect others."""

    max_total: int = 10_000
    max_per_store: int = 1_000
    max_unauthenticated: int = 1_000
    max_unauthenticated_per_ip: int = 64
    # What is counted now (not configuration).
    total: int = attrs.field(default=0, init=False)
    unauthenticated: int = attrs.field(default=0, init=False)
    per_ip: dict[str, int] = attrs.field(factory=dict, init=False)
    per_store: dict[str, int] = attrs.field(factory=dict, init=False)

    def enter(self, ip: str = "") -> None:
        """Count a new, not yet authenticated connection, or raise :class:`Overloaded`."""
        n = self.per_ip.get(ip, 0)
        if self.unauthenticated >= self.max_unauthenticated:
            raise Overloaded(
                f"{self.unauthenticated} connections are authenticating (the cap is "
                f"{self.max_unauthenticated})",
            )
        if n >= self.max_unauthenticated_per_ip:
            raise Overloaded(
                f"this address has {n} connections authenticating (the cap is "
                f"{self.max_unauthenticated_per_ip})",
            )
        self.unauthenticated += 1
        self.per_ip[ip] = n + 1

    def leave_unauthenticated(self, ip: str = "") -> None:
        """A connection counted by :meth:`enter` authenticated or ended."""
        self.unauthenticated -= 1
        n = self.per_ip.pop(ip) - 1
        if n:
            self.per_ip[ip] = n

    def authenticated(self) -> None:
        """Count an authenticated connection, or raise :class:`Overloaded`."""
        if self.total >= self.max_total:
            raise Overloaded(
                f"the relay serves {self.total} connections (the cap is {self.max_total})",
            )
        self.total += 1

    def leave(self) -> None:
        """A connection counted by :meth:`authenticated` ended."""
        self.total -= 1

    def enter_store(self, store: str) -> None:
        """Count a connection to ``store``, or raise :class:`Overloaded` at the cap."""
        n = self.per_store.get(store, 0)
        if n >= self.max_per_store:
            raise Overloaded(
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
    max_unit_bytes: int = 256 << 20  # cap on the frames of one multi-part push held in memory
    send_timeout: float = 60.0  # a peer that reads nothing for this long is dropped
    limits: ConnectionLimits = attrs.Factory(ConnectionLimits)
    # Worker threads decoding large frames at once, for the whole relay.
    decode_limiter: trio.CapacityLimiter = attrs.Factory(lambda: trio.CapacityLimiter(2))


class _Stalled(Exception):
    """The peer stopped reading: drop the connection without an error frame."""


class Forbidden(Refusal):
    """The token does not grant access to the store the hello names."""

    code = p.ErrorCode.FORBIDDEN.value


class Session:
    """One authenticated peer connection: a trio loop around the connection's
    :class:`~crsync.relay_session.RelaySession` (the sync rules), doing the I/O it asks for."""

    def __init__(
        self,
        ws: ServerConnection,
        hub: Hub,
        settings: RelaySettings,
        rules: rs.RelaySession,
        handle: StoreHandle,
    ) -> None:
        assert rules.hello is not None
        self.ws = ws
        self.hub = hub
        self.settings = settings
        self.rules = rules
        self.hello = rules.hello
        self.site = rules.hello.site
        self.handle = handle
        self.send_lock = trio.Lock()
        self.log = logging.LoggerAdapter(
            log, {"store": self.hello.store, "site": self.hello.site.hex()}
        )

    async def send(self, msg: p.Message) -> None:
        """Send a message; a peer that does not read it within ``send_timeout`` is dropped
        (its connection and the memory held for it are released)."""
        async with self.send_lock:
            try:
                with trio.fail_after(self.settings.send_timeout):
                    await self.ws.send(p.encode(msg))
            except trio.TooSlowError:
                raise _Stalled(
                    f"the peer read nothing for {self.settings.send_timeout:g} s"
                ) from None

    async def sender(self) -> None:
        """Send the store's changes the peer lacks, forever: catch-up, then live. A version
        larger than the read budget goes out as one unit in several parts (``more``), read
        part by part, so what a session holds stays bounded."""
        h = self.handle
        rules = self.rules
        while True:
            rules.store_advanced(h.head, h.horizon)
            read = rules.next_read()
            if read is None:
                await h.changed.wait()
                continue
            page = await self.hub.read_page(
                h, read.cursor, self.site, self.settings.batch_cells, read.resume
            )
            for action in rules.page_read(page.changes, page.upto, page.resume):
                assert isinstance(action.message, p.Changes)
                # Counted before the send: once sent, the device may see the changes (and a
                # scrape may follow) before this task runs again.
                self.hub.metrics.changes_sent.inc(len(action.message.changes))
                await self.send(action.message)

    async def receiver(self) -> None:
        """Handle what the peer sends until it closes."""
        rules = self.rules
        async for raw in self.ws:
            if len(raw) > OFFLOAD_DECODE_BYTES:
                # Decoding and validating a large push takes long: do it in a worker thread
                # so other connections are served meanwhile (a few at a time).
                msg = await trio.to_thread.run_sync(
                    rules.decode, raw, limiter=self.settings.decode_limiter
                )
            else:
                msg = rules.decode(raw)
            rules.store_advanced(self.handle.head, self.handle.horizon)
            for action in rules.receive(msg, len(raw)):
                await self._perform(action)

    async def _perform(self, action: rs.Action) -> None:
        if isinstance(action, rs.Send):
            await self.send(action.message)
        elif isinstance(action, rs.CheckQuota):
            await self.hub.check_quota(self.handle)
        elif isinstance(action, rs.MergeUnit):
            try:
                # Under the store's push rate limit this waits (backpressure: the peer waits
                # for its ack) rather than refusing; over its byte quota it refuses.
                head, wins = await self.hub.push(
                    self.handle, self.site, action.upto, action.changes, limited=True
                )
            except InvalidChangeError as exc:
                raise ProtocolError(p.ErrorCode.INVALID_CHANGES.value, str(exc)) from None
            self.log.debug(
                "relay.push store=%s cells=%d wins=%d head=%d",
                self.hello.store,
                len(action.changes),
                wins,
                head,
            )
            for then in self.rules.unit_merged(head):
                await self._perform(then)
        elif isinstance(action, rs.RecordReceived):
            await self.hub.record_received(self.handle, self.site, action.upto)
        else:  # pragma: no cover - Admit and Close come only from the handshake and fail()
            raise AssertionError(f"unexpected action {action!r}")


async def _send_error(ws: ServerConnection, close: rs.Close, hub: Hub) -> None:
    hub.metrics.errors.labels(code=close.code).inc()
    try:
        with trio.move_on_after(5):
            await ws.send(p.encode(p.Error(close.code, close.reason)))
            await ws.aclose(close.ws_code, close.code)
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _look(handle: StoreHandle, hello: p.Hello, rules: rs.RelaySession) -> rs.StoreView:
    """What the store says about the hello's site and schema, checked in the order
    :class:`~crsync.relay_session.StoreView` names, stopping at the first problem (a site that
    is the relay's own is never bound); then the site is recorded as seen (a departed device
    is re-admitted) and the catch-up figures are read: the horizon, what remains after the
    catch-up start and, for a hello naming a half-received unit, the first version after the
    cursor (``rules`` decides where catch-up starts)."""
    w = handle.writer
    async with handle.write_lock:
        epoch, head = handle.epoch, handle.head
        if hello.site == await trio.to_thread.run_sync(w.relay_site):
            return rs.StoreView(epoch, head, own_site=True)
        claim = await trio.to_thread.run_sync(w.bind_site, hello.site, hello.site_key)
        if claim is not None:
            return rs.StoreView(epoch, head, site_claim=claim)
        problem = await trio.to_thread.run_sync(w.check_schema, dict(hello.schema))
        if problem is not None:
            return rs.StoreView(epoch, head, schema_problem=problem)
        position = await trio.to_thread.run_sync(w.peer, hello.site)
        await trio.to_thread.run_sync(w.seen, hello.site)  # re-admits a departed device
    # Catch-up figures: read outside the write lock (merges meanwhile only add to them).
    r = handle.reader
    async with handle.read_lock:
        horizon = await trio.to_thread.run_sync(r.horizon)
        cursor, _ = rules.catch_up_from(epoch, head)
        nxt = None
        if hello.resume is not None:
            nxt = await trio.to_thread.run_sync(r.next_version, cursor)
        cursor, after = rules.catch_up_from(epoch, head, nxt)
        remaining = await trio.to_thread.run_sync(r.remaining, cursor, after)
    handle.horizon = max(handle.horizon, horizon)
    return rs.StoreView(
        epoch,
        head,
        position.pushed_upto,
        position.received_upto,
        horizon=horizon,
        remaining=remaining,
        next_version=nxt,
    )


async def handle_connection(ws: ServerConnection, hub: Hub, settings: RelaySettings) -> None:
    """Serve one peer connection; errors end this connection only."""
    rules = rs.RelaySession(
        max_frame=settings.max_frame,
        batch_cells=settings.batch_cells,
        max_unit_cells=settings.max_unit_cells,
        max_unit_bytes=settings.max_unit_bytes,
    )
    handle: StoreHandle | None = None
    peer = getattr(ws, "remote_address", None)
    limits = settings.limits
    counted = counted_store = False
    ip = peer[0] if isinstance(peer, tuple) and peer else str(peer)
    unauthenticated = False
    subject = ""
    try:
        limits.enter(ip)
        unauthenticated = True
        with trio.fail_after(settings.handshake_timeout):
            raw = await ws.recv()
        (admit,) = rules.receive(rules.decode(raw), len(raw))
        assert isinstance(admit, rs.Admit)
        hello = admit.hello
        check_store_id(hello.store)
        if settings.secret is not None:
            claims = verify_token(settings.secret, hello.token)
            if not claims.allows(hello.store):
                raise Forbidden(f"the token does not grant access to store {hello.store!r}")
            subject = claims.subject
        limits.leave_unauthenticated(ip)
        unauthenticated = False
        limits.authenticated()
        counted = True
        # Authenticated: from now on frames up to twice the limit are read (so that the protocol
        # can refuse an oversized one with frame_too_large); before, the server's small
        # handshake limit applies.
        ws.protocol.max_message_size = rules.frame_cap
        limits.enter_store(hello.store)
        counted_store = True
        handle = await hub.acquire(hello.store, subject if settings.secret else None)
        await hub.charge(handle)
        welcome = rules.admitted(await _look(handle, hello, rules))
        session = Session(ws, hub, settings, rules, handle)
        for action in welcome:
            await session._perform(action)
        session.log.info(
            "relay.connect store=%s site=%s cursor=%d head=%d epoch_match=%s resumed=%s",
            hello.store,
            hello.site.hex(),
            rules.sent_upto,
            rules.head,
            rules.epoch_matched,
            rules.resumed,
        )
        handle.sessions += 1
        site = hello.site
        handle.connected[site] = handle.connected.get(site, 0) + 1
        hub.metrics.connections.inc()
        hub.metrics.connections_active.inc()
        try:
            async with open_nursery() as nursery:
                nursery.start_soon(session.sender)
                await session.receiver()
                nursery.cancel_scope.cancel()
        finally:
            handle.sessions -= 1
            if handle.connected[site] == 1:
                del handle.connected[site]
            else:
                handle.connected[site] -= 1
            hub.metrics.connections_active.dec()
    except (Refusal, rs.Refused) as exc:
        close = rules.fail(exc.code, exc.reason)
        if _REFUSAL_LOG.allow():
            log.warning("relay.refused peer=%s code=%s reason=%s", peer, close.code, close.reason)
        await _send_error(ws, close, hub)
    except ProtocolError as exc:
        close = rules.fail(exc.code, exc.reason)
        if _REFUSAL_LOG.allow():
            log.warning(
                "relay.protocol_error peer=%s code=%s reason=%s", peer, close.code, close.reason
            )
        await _send_error(ws, close, hub)
    except _Stalled as exc:
        log.warning("relay.peer_stalled peer=%s reason=%s", peer, exc)
        hub.metrics.errors.labels(code="stalled").inc()
        with trio.move_on_after(1):
            await ws.aclose(1008, "stalled")
        log.info("relay.peer_dropped peer=%s", peer)  # closed: what it held is released
    except trio.TooSlowError:
        close = rules.fail(p.ErrorCode.BAD_FRAME.value, "no hello within the handshake timeout")
        await _send_error(ws, close, hub)
    except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    except sqlite3.Error as exc:
        # Disk full, read-only or failing storage: nothing of the unit was committed, so
        # nothing was acknowledged; the peer retries (with backoff) and succeeds once the
        # storage recovers.
        store = rules.hello.store if rules.hello is not None else "-"
        log.error("relay.store_write_failed peer=%s store=%s error=%s", peer, store, exc)
        close = rules.fail(
            p.ErrorCode.INTERNAL.value,
            f"the relay could not write store {store!r} ({exc}); nothing was stored, retry later",
        )
        await _send_error(ws, close, hub)
    except Exception as exc:
        log.exception("relay.internal_error peer=%s", peer)
        close = rules.fail(p.ErrorCode.INTERNAL.value, f"internal error: {type(exc).__name__}")
        await _send_error(ws, close, hub)
    finally:
        if handle is not None:
            hub.release(handle, subject if settings.secret else None)
        if counted_store:
            assert rules.hello is not None
            limits.leave_store(rules.hello.store)
        if counted:
            limits.leave()
        if unauthenticated:
            limits.leave_unauthenticated(ip)


class _LogBudget:
    """At most ``per_second`` lines a second (bursts of ``burst``) for one kind of log line
    that clients can cause at will (refusals); what is left out is counted and reported in a
    ``relay.log_suppressed`` line once lines are allowed again."""

    def __init__(self, per_second: float = 20.0, burst: float = 100.0) -> None:
        self.per_second = per_second
        self.burst = burst
        self.level = burst
        self.last = time.monotonic()
        self.suppressed = 0

    def allow(self) -> bool:
        now = time.monotonic()
        self.level = min(self.burst, self.level + (now - self.last) * self.per_second)
        self.last = now
        if self.level < 1:
            self.suppressed += 1
            return False
        self.level -= 1
        if self.suppressed:
            log.warning(
                "relay.log_suppressed lines=%d (refusals over the log budget)", self.suppressed
            )
            self.suppressed = 0
        return True


_REFUSAL_LOG = _LogBudget()
