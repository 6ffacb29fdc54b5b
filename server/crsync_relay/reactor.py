"""Store reactors: server-side code called for the changes merged into each store.

``crsync-relay serve --reactor module:object`` (or ``path/to/file.py:object``) loads a callable
``async def react(batch: ReactorBatch) -> None``. For each store (or those matching
``--reactor-stores``), the relay calls it with the changes merged since the previous call, in
relay-version order, excluding the reactor's own writes. Through the batch the handler reads the
store's current rows and writes back; its writes are merged and broadcast like a peer's push,
under a site id the relay keeps per store (``relay_meta`` key ``relay_site``).

Delivery is at least once. The store records how far its reactor got (``relay_meta`` key
``reactor_cursor``) in the same transaction as the batch's writes, so the writes of a handled
batch and the cursor move together; a batch whose handler failed, or had not finished when the
relay stopped, is delivered again. Side effects outside the store (e-mail, HTTP) must therefore
be idempotent, e.g. keyed by the row's primary key and checked against a result column.

Isolation: each store's reactor runs in its own task, started when a push lands (stores created
at runtime included) and at startup for stores whose cursor is behind their head; it holds no
lock while the handler runs, so pushes and acks never wait for it. An exception is logged with
the store and batch and the batch is retried with exponential backoff; other stores go on.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from crsync.change import MAX_CLOCK, SENTINEL, Change, validate_changes
from crsync.errors import CrsyncError
from crsync.pack import SqlValue, pack_pk, unpack_pk

from .hub import Hub, Overloaded, StoreHandle
from .store import RelayStore
from .store_api import StoreBackend

log = logging.getLogger(__name__)

Handler = Callable[["ReactorBatch"], Awaitable[None]]

LEASE_SECONDS = 1.0
"""PostgreSQL: how often a node checks its lease connection and looks for stores whose
reactor nobody runs (a node that died released its leases with its connection)."""


class ReactorLeases:
    """Which stores' reactors run on this node, with stores in PostgreSQL: each store's
    reactor runs on exactly one node, the one holding the store's session-level advisory lock
    (``pg_try_advisory_lock(hashtext('crsync_relay.reactor:' || store))``) on its dedicated
    lease connection. When a node dies, PostgreSQL ends its connection and releases its locks;
    another node's next try takes the store over. When a node loses its lease connection, it
    stops its reactors at once (``lost``) and tries again with a new connection."""

    def __init__(self, db: Any) -> None:
        self.db = db
        self.owned: set[str] = set()
        self._conn: Any = None
        self._lock = trio.Lock()  # one statement at a time on the lease connection
        self.on_lost: Callable[[], None] = lambda: None

    async def _run(self, op: Callable[[Any], Any]) -> Any:
        """``op(lease connection)`` in a worker thread (the connection made if needed); None
        if it failed (then every lease is lost)."""
        from .pg_store import LeaseConnection

        async with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await trio.to_thread.run_sync(LeaseConnection, self.db)
                conn = self._conn
                return await trio.to_thread.run_sync(op, conn)
            except Exception as exc:
                self._lose(exc)
                return None

    def _lose(self, exc: BaseException) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # already broken
                pass
        if self.owned:
            log.warning(
                "relay.reactor.leases_lost stores=%d error=%s", len(self.owned), type(exc).__name__
            )
        self.owned.clear()
        self.on_lost()

    async def acquire(self, store: str) -> bool:
        """True if this node runs the store's reactor (taking the lease if free)."""
        if store in self.owned:
            return True
        key = "crsync_relay.reactor:" + store
        got = await self._run(lambda conn: conn.try_lock(key))
        if got:
            self.owned.add(store)
            log.info("relay.reactor.lease store=%s", store, extra={"store": store})
        return bool(got)

    async def check(self) -> bool:
        """True if the lease connection answers (False: every lease was lost)."""
        return bool(await self._run(lambda conn: conn.alive()))

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def load_reactor(spec: str) -> Handler:
    """Load ``module:object`` or ``path/to/file.py:object``.

    Raises:
        CrsyncError: naming what could not be found or called.
    """
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise CrsyncError(f"--reactor must be module:object or file.py:object, not {spec!r}")
    try:
        if mod_name.endswith(".py") or "/" in mod_name:
            path = Path(mod_name)
            if not path.is_file():
                raise CrsyncError(f"cannot load reactor {spec!r}: no file {path}")
            name = "crsync_reactor_" + path.stem
            sp = importlib.util.spec_from_file_location(name, path)
            assert sp is not None and sp.loader is not None
            module = importlib.util.module_from_spec(sp)
            sys.modules[name] = module
            sp.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except CrsyncError:
        raise
    except Exception as exc:
        raise CrsyncError(f"cannot load reactor {spec!r}: {type(exc).__name__}: {exc}") from None
    obj = getattr(module, attr, None)
    if obj is None:
        raise CrsyncError(f"cannot load reactor {spec!r}: {mod_name} has no {attr!r}")
    return as_handler(obj, spec)


def as_handler(obj: Any, name: str = "reactor") -> Handler:
    """Accept an async callable, or an object with an async ``react`` method."""
    fn = getattr(obj, "react", obj)
    if not callable(fn):
        raise CrsyncError(f"reactor {name} is not callable")
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(type(fn).__call__)):
        raise CrsyncError(f"reactor {name} must be an async function (async def react(batch))")
    return fn  # type: ignore[no-any-return]


@attrs.frozen
class RowChange:
    """The changes of one row in a batch."""

    table: str
    pk: tuple[SqlValue, ...]
    values: dict[str, SqlValue]
    """Changed columns and their new values."""
    deleted: bool
    site_id: bytes
    """Site of the last change of the row in the batch."""


@attrs.define
class StoreRow:
    """A row as the store holds it now."""

    table: str
    pk: tuple[SqlValue, ...]
    cl: int
    values: dict[str, SqlValue]
    versions: dict[str, int]

    @property
    def alive(self) -> bool:
        return self.cl % 2 == 1


def _next_cl(table: str, key: tuple[SqlValue, ...], cl: int) -> int:
    if cl + 1 > MAX_CLOCK:
        raise CrsyncError(
            f"table {table!r}, key {key!r}: the row's causal length is at the clock bound "
            f"{MAX_CLOCK}; it cannot be deleted or re-created"
        )
    return cl + 1


class ReactorBatch:
    """What a reactor handler gets: the new changes of one store and a way to answer them."""

    def __init__(
        self,
        handle: StoreHandle,
        site_id: bytes,
        changes: list[Change],
        base: int,
        upto: int,
        attempt: int,
    ) -> None:
        self._handle = handle
        self.store = handle.store_id
        self.site_id = site_id
        """The relay's own site id in this store (authors the reactor's writes)."""
        self.changes = changes
        """Changes merged after relay version ``base`` up to ``upto``, in order."""
        self.base = base
        self.upto = upto
        self.attempt = attempt
        """1 for the first delivery of this batch, more when it is retried."""
        self._writes: list[Change] = []
        self._own: dict[tuple[str, bytes], StoreRow] = {}

    def rows(self) -> list[RowChange]:
        """The batch grouped by row, in order of first change."""
        out: dict[tuple[str, bytes], dict[str, Any]] = {}
        for c in self.changes:
            r = out.setdefault((c.table, c.pk), {"values": {}, "cl": c.cl, "site": c.site_id})
            r["cl"] = max(r["cl"], c.cl)
            r["site"] = c.site_id
            if c.cid != SENTINEL:
                r["values"][c.cid] = c.val
        return [
            RowChange(t, unpack_pk(pk), r["values"], r["cl"] % 2 == 0, r["site"])
            for (t, pk), r in out.items()
        ]

    async def row(self, table: str, pk: Sequence[SqlValue]) -> StoreRow | None:
        """The row as the store holds it (with this batch's pending writes), None if never
        written."""
        blob = pack_pk(tuple(pk))
        own = self._own.get((table, blob))
        if own is not None:
            return own
        h = self._handle
        async with h.read_lock:
            return await trio.to_thread.run_sync(_read_row, h.reader, table, blob)

    async def set(self, table: str, pk: Sequence[SqlValue], values: Mapping[str, SqlValue]) -> None:
        """Write columns of a row (creating or re-creating it); committed when the handler
        returns, together with the reactor's cursor."""
        key = tuple(pk)
        blob = pack_pk(key)
        cur = await self.row(table, key)
        if cur is None:
            cur = StoreRow(table, key, 1, {}, {})
        elif not cur.alive:
            cur = StoreRow(table, key, _next_cl(table, key, cur.cl), {}, {})
            self._add(table, blob, SENTINEL, None, cur.cl, cur.cl)
        for col, val in values.items():
            if col == SENTINEL:
                raise CrsyncError("column name '-1' is reserved")
            # Saturates at the clock bound (a clock there can only have been forged): the
            # reactor's write then ties and the value decides, instead of an unsendable clock.
            cv = min(cur.versions.get(col, 0) + 1, MAX_CLOCK)
            cur.versions[col] = cv
            cur.values[col] = val
            self._add(table, blob, col, val, cv, cur.cl)
        self._own[(table, blob)] = cur

    async def delete(self, table: str, pk: Sequence[SqlValue]) -> None:
        """Delete a row (if it exists)."""
        key = tuple(pk)
        blob = pack_pk(key)
        cur = await self.row(table, key)
        if cur is None or not cur.alive:
            return
        cl = _next_cl(table, key, cur.cl)
        self._add(table, blob, SENTINEL, None, cl, cl)
        self._own[(table, blob)] = StoreRow(table, key, cl, {}, {})

    def _add(self, table: str, pk: bytes, cid: str, val: SqlValue, cv: int, cl: int) -> None:
        dbv = self.upto + 1
        self._writes.append(
            Change(table, pk, cid, val, cv, dbv, self.site_id, cl, len(self._writes))
        )


def _read_row(store: StoreBackend, table: str, pk: bytes) -> StoreRow | None:
    cells = store.row_cells(table, pk)
    if not cells:
        return None
    r = StoreRow(table, unpack_pk(pk), cells[0][3], {}, {})
    for cid, val, cv, _cl in cells:
        if cid != SENTINEL:
            r.values[cid] = val
            r.versions[cid] = cv
    return r


class ReactorManager:
    """Runs one reactor task per store with new changes."""

    def __init__(
        self,
        hub: Hub,
        handler: Handler,
        *,
        stores: str | None = None,
        batch_cells: int = 5000,
        backoff_initial: float = 0.5,
        backoff_max: float = 60.0,
        max_attempts: int = 5,
        max_concurrent: int = 32,
    ) -> None:
        """``stores``: comma-separated glob patterns of store ids to run the reactor for."""
        self.hub = hub
        self.handler = handler
        self.patterns = [p.strip() for p in (stores or "*").split(",") if p.strip()]
        self.batch_cells = batch_cells
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        # Deliveries of a batch before it is narrowed to its first relay version, and of that
        # version before it is set aside (recorded with the reason; later changes go on).
        self.max_attempts = max(1, max_attempts)
        self.set_aside = 0
        self.limiter = trio.CapacityLimiter(max_concurrent)
        self._nursery: trio.Nursery | None = None
        self._running: set[str] = set()
        self._dirty: set[str] = set()
        self._scopes: dict[str, trio.CancelScope] = {}
        self.leases: ReactorLeases | None = None
        if hub.database is not None:
            self.leases = ReactorLeases(hub.database)
            self.leases.on_lost = self._leases_lost
        self.failures = 0

    def wants(self, store: str) -> bool:
        """True if this store runs the reactor."""
        return any(fnmatch.fnmatchcase(store, p) for p in self.patterns)

    def notify(self, h: StoreHandle) -> None:
        """A push landed in a store (called by the hub): make sure its reactor runs."""
        self.kick(h.store_id)

    def kick(self, store: str) -> None:
        if self._nursery is None or not self.wants(store):
            return
        self._dirty.add(store)
        if store not in self._running:
            self._running.add(store)
            self._nursery.start_soon(self._store_task, store, name=f"reactor:{store}")

    def _leases_lost(self) -> None:
        """This node no longer holds its reactor leases: stop its reactors now."""
        for scope in self._scopes.values():
            scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled: catch up stores left behind, then follow pushes."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                if self.leases is not None:
                    await self._follow_leases()  # catches up stores left behind, too
                for store, behind in await trio.to_thread.run_sync(self._behind_stores):
                    if behind:
                        log.info("relay.reactor.catch_up store=%s", store, extra={"store": store})
                        self.kick(store)
                await trio.sleep_forever()
        finally:
            if self.leases is not None:
                self.leases.close()

    async def _follow_leases(self) -> None:
        """PostgreSQL, forever: every ``LEASE_SECONDS``, check the lease connection and kick
        the stores left behind whose reactor this node does not run (their owner may have
        died: the kicked task takes the lease if it is free). A timer, not a synchronisation."""
        assert self.leases is not None and self.hub.database is not None
        db = self.hub.database
        while True:
            if await self.leases.check():
                try:
                    behind = await trio.to_thread.run_sync(db.stores_behind)
                except Exception as exc:
                    log.warning("relay.reactor.scan_failed error=%s", type(exc).__name__)
                    behind = []
                for store in behind:
                    if self.wants(store) and store not in self._running:
                        self.kick(store)
            await trio.sleep(LEASE_SECONDS)

    def _behind_stores(self) -> list[tuple[str, bool]]:
        """Each store this reactor runs for, and whether its cursor is behind (blocking)."""
        assert self.hub.database is None, "with PostgreSQL, _follow_leases catches up"
        assert self.hub.layout is not None
        return [
            (s, RelayStore.reactor_behind(path))
            for s, path in self.hub.layout.stores()
            if self.wants(s)
        ]

    async def _store_task(self, store: str) -> None:
        backoff = self.backoff_initial
        attempt = 0
        try:
            while store in self._dirty:
                self._dirty.discard(store)
                if self.leases is not None and not await self.leases.acquire(store):
                    self._dirty.discard(store)
                    return  # another node runs this store's reactor
                scope = self._scopes[store] = trio.CancelScope()
                try:
                    with scope:
                        async with self.limiter:
                            h = await self.hub.acquire(store)
                            try:
                                attempt = await self._drain(h, attempt)
                            finally:
                                self.hub.release(h)
                    if scope.cancelled_caught:
                        return  # the lease was lost: another node takes over
                    backoff = self.backoff_initial
                except Exception as exc:
                    self.failures += 1
                    attempt += 1
                    if not isinstance(exc, _HandlerFailed | Overloaded):
                        log.exception("relay.reactor.error store=%s", store, extra={"store": store})
                    delay = random.uniform(backoff / 2, backoff)
                    backoff = min(backoff * 2, self.backoff_max)
                    self._dirty.add(store)
                    await trio.sleep(delay)  # retry backoff (a timer, not a synchronisation)
        finally:
            self._running.discard(store)
            self._scopes.pop(store, None)

    async def _drain(self, h: StoreHandle, attempt: int) -> int:
        """Handle every batch up to the store's head; return the attempt count (0 when done)."""
        async with h.write_lock:
            site, cursor = await trio.to_thread.run_sync(h.writer.reactor_state)
        while cursor < h.head:
            # After max_attempts failed deliveries, deliver one relay version at a time, so that
            # what is set aside in the end is only the version the handler cannot process.
            narrow = attempt >= self.max_attempts
            cells = 1 if narrow else self.batch_cells
            changes, upto, _complete = await self.hub.read(h, cursor, site, cells)
            if not changes:  # only the reactor's own writes
                cursor = upto
                continue
            batch = ReactorBatch(h, site, changes, cursor, upto, attempt + 1)
            started = time.perf_counter()
            try:
                await self.handler(batch)
            except Exception as exc:
                first = changes[0]
                log.error(
                    "relay.reactor.failed store=%s base=%d upto=%d changes=%d attempt=%d "
                    "first_table=%s first_pk=%s error=%s: %s",
                    h.store_id,
                    cursor,
                    upto,
                    len(changes),
                    attempt + 1,
                    first.table,
                    first.pk.hex(),
                    type(exc).__name__,
                    exc,
                    exc_info=True,
                    extra={"store": h.store_id},
                )
                if narrow and attempt + 1 >= 2 * self.max_attempts:
                    reason = f"{type(exc).__name__}: {exc}"
                    async with h.write_lock:
                        await trio.to_thread.run_sync(
                            h.writer.set_aside_reactor_batch, cursor, upto, reason
                        )
                    self.set_aside += 1
                    log.error(
                        "relay.reactor.set_aside store=%s base=%d upto=%d attempts=%d reason=%s",
                        h.store_id,
                        cursor,
                        upto,
                        attempt + 1,
                        reason,
                        extra={"store": h.store_id},
                    )
                    cursor = upto
                    attempt = 0
                    continue
                raise _HandlerFailed(str(exc)) from exc
            writes = validate_changes(batch._writes)
            if writes:
                await self.hub.push(h, site, upto + 1, writes, reactor_cursor=upto)
            else:
                async with h.write_lock:
                    await trio.to_thread.run_sync(h.writer.save_reactor_cursor, upto)
            log.debug(
                "relay.reactor.batch store=%s base=%d upto=%d changes=%d writes=%d seconds=%.3f",
                h.store_id,
                cursor,
                upto,
                len(changes),
                len(writes),
                time.perf_counter() - started,
                extra={"store": h.store_id},
            )
            cursor = upto
            attempt = 0
        return 0


class _HandlerFailed(Exception):
    """The reactor handler raised (already logged with its context)."""


__all__ = [
    "ReactorBatch",
    "ReactorManager",
    "RowChange",
    "StoreRow",
    "as_handler",
    "load_reactor",
]
