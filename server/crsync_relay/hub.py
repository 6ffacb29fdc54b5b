"""Store ownership and fan-out: which stores are open, who is connected, who must be woken.

:class:`Hub` is the one interface the connection handlers use; a multi-node relay replaces it
with an implementation that owns only some stores and forwards the rest. This one owns every
store in one data directory: each store is its own SQLite file, opened lazily, closed when idle,
with a cap on how many are open at once.

Fan-out does not queue messages per peer: a merged batch advances the store's ``head`` and wakes
the store's sessions; each session sends what it lacks, from a small in-memory ring of recent
batches when it is current, or from disk when it fell behind. A slow peer therefore costs no
relay memory; it just reads from disk later.

Per-store limits apply to what peers push (:meth:`Hub.push` with ``limited=True``), not to what
a store reactor writes: a byte quota (``max_store_bytes``: a store whose database is larger
refuses further pushes with :class:`QuotaExceeded`, checked under the store's write lock before
anything is merged; the size is the database's as of its last commit, see
:meth:`RelayStore.data_bytes`) and a push rate (``max_push_cells_per_second``: a token
bucket per store holding one second of cells; a push waits for its cells before it is merged and
acknowledged, so a tenant at its rate is slowed down, never refused, and other stores are not
affected).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import trio

from crsync.change import Change
from crsync.protocol import ErrorCode

from .datadir import DataDir, check_store_id
from .metrics import RelayMetrics
from .refusal import Refusal
from .store import RelayStore
from .store_api import StoreBackend
from .store_rules import DEFAULT_MAX_OFFLINE, Collected, GcStats, Page

if TYPE_CHECKING:
    from .pg_store import PgDatabase

log = logging.getLogger(__name__)


RECENT_MAX_CELLS = 2000  # largest batch kept in a store's in-memory ring (16 batches at most)
RECENT_MAX_BYTES = 1 << 20  # largest batch (estimated bytes) kept in the ring
RING_BYTES = 4 << 20  # bytes of one store's ring in all
HEADS_RECHECK_SECONDS = 2.0  # PostgreSQL: safety re-read of open stores' heads (missed NOTIFY)
LISTEN_RETRY_SECONDS = 1.0  # PostgreSQL: pause before the LISTEN connection is made again


class _Index(Protocol):
    def created_by(self, subject: str) -> int: ...
    def add(self, store: str, subject: str) -> None: ...
    def close(self) -> None: ...


def _excluding(batch: list[Change], via: bytes | list[bytes], site: bytes) -> list[Change]:
    """A ring batch without the changes ``site`` pushed itself (``via``: the one pushing site
    of the batch, or the pushing site of each change)."""
    if isinstance(via, bytes):
        return [] if via == site else batch
    return [c for c, v in zip(batch, via, strict=True) if v != site]


READ_BYTES = 2 << 20  # one catch-up read of a session (a larger version goes out in parts)


def batch_bytes(changes: Sequence[Change]) -> int:
    """Estimated memory of a batch of changes (values and keys, plus a fixed cost per change)."""
    n = 0
    for c in changes:
        v = c.val
        n += 120 + len(c.pk) + len(c.table) + len(c.cid)
        if isinstance(v, str | bytes):
            n += len(v)
    return n


class Overloaded(Refusal):
    """Too many stores (or connections) are in use to serve another one."""

    code = ErrorCode.OVERLOADED.value


class QuotaExceeded(Refusal):
    """A store is over its byte quota; it accepts no more pushes."""

    code = ErrorCode.QUOTA_EXCEEDED.value


@attrs.define(eq=False)
class StoreHandle:
    """An open store: its connections, head, sessions and recent batches."""

    store_id: str
    writer: StoreBackend
    reader: StoreBackend
    head: int
    epoch: str
    write_lock: trio.Lock = attrs.Factory(trio.Lock)
    read_lock: trio.Lock = attrs.Factory(trio.Lock)
    users: int = 0
    last_used: float = attrs.Factory(time.monotonic)
    changed: trio.Event = attrs.Factory(trio.Event)
    # (base, head, changes, pushing site (of the batch, or of each change), estimated bytes)
    recent: deque[tuple[int, int, list[Change], bytes | list[bytes], int]] = attrs.Factory(
        lambda: deque(maxlen=16)
    )
    sessions: int = 0
    # push rate limit: the time (trio clock) at which the cells pushed so far are paid for
    paid_until: float = 0.0
    horizon: int = 0  # the store's horizon as last read or collected
    # Sites connected to the store now, each with its number of connections (they count as
    # seen now when the store collects).
    connected: dict[bytes, int] = attrs.Factory(dict)

    def wake(self) -> None:
        """Wake every session waiting for a new head."""
        self.changed.set()
        self.changed = trio.Event()

    def remember(
        self, base: int, upto: int, batch: list[Change], via: bytes | list[bytes], size: int
    ) -> None:
        """Keep a batch in the ring of recent ones, dropping the oldest past ``RING_BYTES``."""
        self.recent.append((base, upto, batch, via, size))
        while sum(e[4] for e in self.recent) > RING_BYTES:
            self.recent.popleft()


@attrs.frozen
class HubLimits:
    """What one hub serves at most (0: unlimited, unless said otherwise)."""

    max_open: int = 256
    """Stores open at once (idle ones are closed to make room)."""
    idle_seconds: float = 60.0
    """A store nobody used for this long is closed."""
    max_store_bytes: int = 0
    """A store's byte quota: a store larger than this refuses pushes."""
    max_push_cells_per_second: float = 0
    """A store's push rate: pushes over it wait (one second of burst)."""
    max_open_per_subject: int = 0
    """Stores one token subject uses at once (0: a quarter of ``max_open``)."""
    max_new_stores_per_minute: int = 60
    """Stores one token subject creates a minute."""
    max_stores_per_subject: int = 0
    """Stores one token subject creates in all."""
    gc_interval: float = 3600.0
    """Seconds between two garbage collections of an open store (each store is also
    collected once when it opens); 0: only when a store opens."""
    max_offline: float = DEFAULT_MAX_OFFLINE
    """A store's ``max_offline`` unless an operator set one for it."""

    @property
    def open_per_subject(self) -> int:
        """Stores one subject may use at once."""
        return self.max_open_per_subject or max(1, self.max_open // 4)


class Hub:
    """Store ownership and fan-out of one relay node: the stores of a data directory (SQLite
    files, one node), or of a PostgreSQL database shared by several nodes (``database``).

    With PostgreSQL, other nodes write the same stores: a merge sends ``NOTIFY`` with the
    store's new head; :meth:`follow_heads` listens on one dedicated connection (drained in a
    thread) and, for a store open here, reads the new versions once into the store's ring and
    wakes its sessions, so a node reads each batch once, not once per session. Every
    ``HEADS_RECHECK_SECONDS`` (and after the LISTEN connection is made again) the heads of the
    open stores are re-read, so a missed notification delays a change, never loses it.
    """

    def __init__(
        self,
        data_dir: Path | None,
        limits: HubLimits | None = None,
        metrics: RelayMetrics | None = None,
        *,
        database: PgDatabase | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Serve the stores in ``data_dir`` (created if missing), or in ``database``, within
        ``limits``. ``clock``: the wall clock stores record ``last_seen`` with and collect
        by (a relay process skews it by ``CRSYNC_RELAY_CLOCK_SKEW``, for tests and drills)."""
        self.clock = clock
        self._gc_due: set[str] = set()  # stores opened and not collected yet
        self._gc_wake = trio.Event()
        self.gc_figures: dict[str, GcStats] = {}  # per open store, as of its last collection
        self.gc_rounds = 0  # rounds of the collector done (a state callers may wait on)
        self.gc_round_done = trio.Event()  # set, and replaced, when a round ends
        if (data_dir is None) == (database is None):
            raise ValueError("a hub serves a data directory or a database, exactly one")
        self.data_dir = data_dir
        self.database = database
        self.layout: DataDir | None = None
        if data_dir is not None:
            self.layout = DataDir(data_dir)
            self.layout.create()  # owner-only
        self._stale: dict[str, int] = {}  # store -> head heard of (PostgreSQL)
        self._stale_trio = trio.Event()
        self.listening = False  # the LISTEN connection is up (PostgreSQL)
        self._recheck = trio.Event()
        self._listen_tried = trio.Event()
        self.limits = limits if limits is not None else HubLimits()
        self.read_bytes = READ_BYTES  # catch-up reads stop at whole versions past this size
        self._subject_stores: dict[str, dict[str, int]] = {}
        self._store_index: _Index | None = None
        self._creation_bucket: dict[str, tuple[float, float]] = {}
        self._open: OrderedDict[str, StoreHandle] = OrderedDict()
        self._opening: dict[str, trio.Event] = {}
        self.metrics = metrics if metrics is not None else RelayMetrics()
        # Called (synchronously, must not block) after a push advanced a store's head.
        self.push_listeners: list[Callable[[StoreHandle], None]] = []

    def path_for(self, store: str) -> Path:
        """File of a store (the id was validated; SQLite data directories only)."""
        if self.layout is None:
            check_store_id(store)
            raise ValueError("stores in PostgreSQL have no file")
        return self.layout.store_path(store)

    def _exists(self, store: str) -> bool:
        """True if the store exists (blocking: a worker thread for PostgreSQL)."""
        if self.database is not None:
            return self.database.has_store(store)
        return self.path_for(store).exists()

    def _open_backend(self, store: str) -> tuple[StoreBackend, StoreBackend]:
        """Writer and reader of a store (blocking; created if missing). A PostgreSQL store
        is one instance: each call borrows a pooled connection."""
        clock, max_offline = self.clock, self.limits.max_offline
        if self.database is not None:
            s = self.database.open_store(store, clock=clock, default_max_offline=max_offline)
            return s, s
        path = self.path_for(store)
        writer = RelayStore(path, clock=clock, default_max_offline=max_offline)
        try:
            return writer, RelayStore(path, clock=clock, default_max_offline=max_offline)
        except BaseException:
            writer.close()
            raise

    async def acquire(self, store: str, subject: str | None = None) -> StoreHandle:
        """Open (or create) a store and count one user of it.

        ``subject``: who the token was issued to (None: no authentication). One subject may
        use at most ``max_open_per_subject`` stores at once and create at most
        ``max_new_stores_per_minute`` stores a minute, so that one token cannot take every
        open-store slot or fill the disk with empty stores.

        Raises:
            BadStoreId: the id is not acceptable.
            Overloaded: the cap on open stores is reached and none is idle, or the subject is
                over its own caps.
        """
        if self.database is None:
            self.path_for(store)  # validates the id
        else:
            check_store_id(store)
        exists = (
            True
            if subject is None and self.database is not None
            else store in self._open or await trio.to_thread.run_sync(self._exists, store)
        )
        creating = subject is not None and not exists
        if subject is not None:
            self._admit(store, subject, exists)
        try:
            if creating and self.limits.max_stores_per_subject > 0:
                assert subject is not None
                made = await trio.to_thread.run_sync(self._index().created_by, subject)
                if made >= self.limits.max_stores_per_subject:
                    raise Overloaded(
                        f"this token's subject created {made} stores (the cap is "
                        f"{self.limits.max_stores_per_subject})"
                    )
            h = await self._acquire(store)
            if creating:
                assert subject is not None
                await trio.to_thread.run_sync(self._index().add, store, subject)
        except BaseException:
            if subject is not None:
                self._forget_user(store, subject)
            raise
        return h

    def _index(self) -> _Index:
        if self._store_index is None:
            if self.database is not None:
                from .pg_store import PgStoreIndex

                self._store_index = PgStoreIndex(self.database)
            else:
                assert self.layout is not None
                self._store_index = self.layout.store_index()
        return self._store_index

    def _admit(self, store: str, subject: str, exists: bool) -> None:
        using = self._subject_stores.setdefault(subject, {})
        if store not in using and len(using) >= self.limits.open_per_subject:
            if not using:
                del self._subject_stores[subject]
            raise Overloaded(
                f"this token's subject uses {len(using)} stores at once (the cap is "
                f"{self.limits.open_per_subject})"
            )
        if store not in using and not exists and self.limits.max_new_stores_per_minute > 0:
            now = time.monotonic()
            rate = self.limits.max_new_stores_per_minute / 60.0
            level, last = self._creation_bucket.get(
                subject, (self.limits.max_new_stores_per_minute, now)
            )
            level = min(float(self.limits.max_new_stores_per_minute), level + (now - last) * rate)
            if level < 1:
                if not using:
                    del self._subject_stores[subject]
                raise Overloaded(
                    f"this token's subject creates stores faster than "
                    f"{self.limits.max_new_stores_per_minute} a minute"
                )
            self._creation_bucket[subject] = (level - 1, now)
        using[store] = using.get(store, 0) + 1

    def _forget_user(self, store: str, subject: str) -> None:
        using = self._subject_stores.get(subject)
        if using is None or store not in using:
            return
        using[store] -= 1
        if not using[store]:
            del using[store]
        if not using:
            del self._subject_stores[subject]

    async def _acquire(self, store: str) -> StoreHandle:
        while True:
            h = self._open.get(store)
            if h is not None:
                h.users += 1
                h.last_used = time.monotonic()
                self._open.move_to_end(store)
                return h
            pending = self._opening.get(store)
            if pending is None:
                break
            await pending.wait()
        done = trio.Event()
        self._opening[store] = done
        try:
            await self._make_room()
            writer, reader = await trio.to_thread.run_sync(self._open_backend, store)
            try:
                head = await trio.to_thread.run_sync(lambda: writer.head)
            except BaseException:
                writer.close()
                if reader is not writer:
                    reader.close()
                raise
            h = StoreHandle(store, writer, reader, head, writer.epoch)
            h.users = 1
            self._open[store] = h
            self._gc_due.add(store)  # collected once when it opens
            self._gc_wake.set()
            self.metrics.stores_open.set(len(self._open))
            log.info(
                "relay.store.open store=%s epoch=%s head=%d",
                store,
                h.epoch,
                h.head,
                extra={"store": store},
            )
            return h
        finally:
            del self._opening[store]
            done.set()

    def release(self, h: StoreHandle, subject: str | None = None) -> None:
        """One user of the store (of ``subject``, as given to :meth:`acquire`) is done."""
        h.users -= 1
        h.last_used = time.monotonic()
        if subject is not None:
            self._forget_user(h.store_id, subject)

    async def _make_room(self) -> None:
        while len(self._open) >= self.limits.max_open:
            idle = [h for h in self._open.values() if h.users == 0]
            if not idle:
                raise Overloaded(
                    f"{len(self._open)} stores are in use (the cap is {self.limits.max_open})"
                )
            await self._close(idle[0])

    async def _close(self, h: StoreHandle) -> None:
        self._open.pop(h.store_id, None)
        self._gc_due.discard(h.store_id)
        if self.gc_figures.pop(h.store_id, None) is not None:
            self._publish_gc()
        async with h.write_lock, h.read_lock:
            await trio.to_thread.run_sync(h.writer.close)
            if h.reader is not h.writer:
                await trio.to_thread.run_sync(h.reader.close)
        self.metrics.stores_open.set(len(self._open))
        log.info("relay.store.close store=%s", h.store_id, extra={"store": h.store_id})

    async def close_idle(self) -> int:
        """Close stores nobody used for ``idle_seconds``; return how many were closed."""
        now = time.monotonic()
        idle = [
            h
            for h in self._open.values()
            if h.users == 0 and now - h.last_used >= self.limits.idle_seconds
        ]
        for h in idle:
            await self._close(h)
        return len(idle)

    async def reaper(self) -> None:
        """Run forever: close idle stores periodically (a timer, not a synchronisation)."""
        while True:
            await trio.sleep(max(self.limits.idle_seconds / 4, 0.5))
            await self.close_idle()

    # ------------------------------------------------------------ garbage collection

    async def collect(self, h: StoreHandle) -> Collected:
        """Collect one open store now (under its write lock, in a worker thread like every
        store call): move its horizon, turn tombstones below it into collected tombstones,
        let devices away longer than ``max_offline`` depart. The sites connected to the
        store count as seen now."""
        async with h.write_lock:
            started = time.perf_counter()
            done = await trio.to_thread.run_sync(
                functools.partial(h.writer.collect, list(h.connected))
            )
            figures = await trio.to_thread.run_sync(h.writer.gc_stats)
            elapsed = time.perf_counter() - started
        h.horizon = max(h.horizon, done.horizon)
        self.metrics.gc_runs.inc()
        self.metrics.gc_seconds.observe(elapsed)
        self.metrics.tombstones_collected.inc(done.collected)
        self.metrics.devices_departed_total.inc(done.departed)
        if h.store_id in self._open:
            self.gc_figures[h.store_id] = figures
            self._publish_gc()
        log.info(
            "relay.gc store=%s horizon=%d collected=%d departed=%d tombstones=%d graves=%d "
            "seconds=%.3f",
            h.store_id,
            done.horizon,
            done.collected,
            done.departed,
            figures.tombstones,
            figures.graves,
            elapsed,
            extra={"store": h.store_id},
        )
        return done

    def _publish_gc(self) -> None:
        """Set the garbage-collection gauges from the open stores' last figures."""
        figures = list(self.gc_figures.values())
        m = self.metrics
        m.tombstones.set(sum(f.tombstones for f in figures))
        m.graves.set(sum(f.graves for f in figures))
        m.horizon_age.set(max((f.horizon_age for f in figures), default=0.0))
        m.devices_departing.set(sum(f.about_to_depart for f in figures))
        m.devices_departed.set(sum(sum(d.departed for d in f.devices) for f in figures))

    async def collector(self) -> None:
        """Run forever: collect each store when it opens, and every open store every
        ``gc_interval`` seconds (a timer, not a synchronisation). A failed collection is
        logged and tried again at the next round; it never stops the relay."""
        interval = self.limits.gc_interval
        next_round = trio.current_time() + interval
        while True:
            with trio.move_on_at(next_round if interval > 0 else float("inf")):
                await self._gc_wake.wait()
            self._gc_wake = trio.Event()
            if interval > 0 and trio.current_time() >= next_round:
                due = list(self._open)
                next_round = trio.current_time() + interval
            else:
                due = [s for s in self._open if s in self._gc_due]
            self._gc_due.clear()
            for store in due:
                h = self._open.get(store)
                if h is None:
                    continue
                h.users += 1  # kept open while it is collected
                try:
                    await self.collect(h)
                except Exception as exc:
                    log.warning(
                        "relay.gc_failed store=%s error=%s: %s",
                        store,
                        type(exc).__name__,
                        exc,
                        extra={"store": store},
                    )
                finally:
                    h.users -= 1
                    h.last_used = time.monotonic()
            self.gc_rounds += 1
            done, self.gc_round_done = self.gc_round_done, trio.Event()
            done.set()

    async def close_all(self) -> None:
        """Close every open store (shutdown)."""
        for h in list(self._open.values()):
            await self._close(h)
        if self._store_index is not None:
            self._store_index.close()
            self._store_index = None

    # ------------------------------------------------------------ cross-node fan-out

    async def follow_heads(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (PostgreSQL only): hear the heads other nodes' merges reach,
        read each new batch of a store open here once, wake its sessions.

        One dedicated connection (not from the pool) does ``LISTEN``, drained in a thread;
        if it breaks, it is made again after ``LISTEN_RETRY_SECONDS`` and the heads of the
        open stores are re-read (as every ``HEADS_RECHECK_SECONDS`` anyway).
        """
        assert self.database is not None
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()
        thread = threading.Thread(
            target=self._listen_thread, args=(token, stop), name="relay-listen", daemon=True
        )
        thread.start()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._recheck_heads)
                # Serve once LISTEN is up (or its first attempt failed): /healthz tells.
                with trio.move_on_after(10):
                    await self._listen_tried.wait()
                task_status.started()
                while True:
                    await self._stale_trio.wait()
                    self._stale_trio = trio.Event()
                    stale, self._stale = self._stale, {}
                    for store, head in stale.items():
                        h = self._open.get(store)
                        if h is not None and head > h.head:
                            nursery.start_soon(self._catch_up_store, h, head)
        finally:
            stop.set()
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.join, 10)

    def _heard(self, store: str, head: int) -> None:
        """A store reached ``head`` (in trio)."""
        if head > self._stale.get(store, 0):
            self._stale[store] = head
            self._stale_trio.set()

    def _listen_thread(self, token: trio.lowlevel.TrioToken, stop: threading.Event) -> None:
        from .pg_store import HeadListener

        assert self.database is not None
        db = self.database
        pg = db._psycopg

        def call(fn: Callable[..., None], *args: Any) -> bool:
            try:
                trio.from_thread.run_sync(fn, *args, trio_token=token)
                return True
            except trio.RunFinishedError:
                return False

        while not stop.is_set():
            try:
                with HeadListener(db) as listener:
                    if not call(self._listen_state, True):
                        return
                    while not stop.is_set():
                        for store, head in listener.heads(timeout=0.5):
                            if not call(self._notified, store, head):
                                return
            except pg.Error as exc:
                log.warning("relay.listen_lost error=%s", type(exc).__name__)
            if not call(self._listen_state, False):
                return
            stop.wait(LISTEN_RETRY_SECONDS)

    def _notified(self, store: str, head: int) -> None:
        self.metrics.notifications.inc()
        self._heard(store, head)

    def _listen_state(self, up: bool) -> None:
        self._listen_tried.set()
        was, self.listening = self.listening, up
        if up and not was:
            log.info("relay.listening_heads")
            self._recheck.set()  # notifications may have been missed meanwhile

    async def _recheck_heads(self) -> None:
        """Re-read the heads of the open stores every ``HEADS_RECHECK_SECONDS`` and when the
        LISTEN connection is made again (a timer and a state, not a synchronisation)."""
        assert self.database is not None
        db = self.database
        while True:
            with trio.move_on_after(HEADS_RECHECK_SECONDS):
                await self._recheck.wait()
            self._recheck = trio.Event()
            ids = list(self._open)
            if not ids:
                continue
            started = time.perf_counter()
            try:
                heads = await trio.to_thread.run_sync(db.heads, ids)
            except Exception as exc:
                log.warning("relay.heads_recheck_failed error=%s", type(exc).__name__)
                continue
            self.metrics.db_seconds.labels(op="heads").observe(time.perf_counter() - started)
            for store, head in heads.items():
                h = self._open.get(store)
                if h is not None and head > h.head:
                    self._heard(store, head)

    async def _catch_up_store(self, h: StoreHandle, target: int) -> None:
        """Read what other nodes merged into an open store once (into its ring), advance its
        head, wake its sessions (and the reactor listeners)."""
        from .pg_store import PgRelayStore

        assert isinstance(h.reader, PgRelayStore)
        async with h.read_lock:
            base = h.head
            if base >= target:
                return  # an earlier read (or a push here) got it already
            started = time.perf_counter()
            try:
                batch, vias, upto, head = await trio.to_thread.run_sync(
                    h.reader.recent_since, base, RECENT_MAX_CELLS, RECENT_MAX_BYTES
                )
            except Exception as exc:
                log.warning(
                    "relay.catch_up_failed store=%s error=%s",
                    h.store_id,
                    type(exc).__name__,
                    extra={"store": h.store_id},
                )
                self._recheck.set()
                return
            self.metrics.db_seconds.labels(op="fanout_read").observe(time.perf_counter() - started)
            if upto > base and h.sessions > 0:
                h.remember(base, upto, batch, vias, batch_bytes(batch))
            self._advance(h, head)

    # ------------------------------------------------------------------ data

    async def push(
        self,
        h: StoreHandle,
        site: bytes,
        upto: int,
        changes: Sequence[Change],
        *,
        limited: bool = False,
        reactor_cursor: int | None = None,
    ) -> tuple[int, int]:
        """Merge a peer's unit durably, then wake the store's other sessions and the
        ``push_listeners`` (a store reactor). ``reactor_cursor``: a store reactor's writes,
        recording in the same transaction that it handled relay versions up to this one.
        ``limited``: a push from a peer: apply the store's push rate and byte quota, and accept
        only changes of tables and columns announced in a hello.

        Returns:
            ``(head, wins)``.

        Raises:
            QuotaExceeded: ``limited`` and the store is over its byte quota; nothing merged.
        """
        if limited:
            # Every push costs at least one cell of the store's rate: empty pushes too.
            await self._throttle(h, max(1, len(changes)))
        meta = None if reactor_cursor is None else {"reactor_cursor": reactor_cursor}
        async with h.write_lock:
            if limited and changes:
                await self._check_quota(h)
            base = h.head
            started = time.perf_counter()
            head, wins = await trio.to_thread.run_sync(
                functools.partial(
                    h.writer.merge_push, site, upto, changes, meta, announced_only=limited
                )
            )
            elapsed = time.perf_counter() - started
            self.metrics.merge_seconds.observe(elapsed)
            if self.database is not None:
                self.metrics.db_seconds.labels(op="merge").observe(elapsed)
            self.metrics.changes_received.inc(len(changes))
            self.metrics.changes_merged.inc(wins)
            # Someone else may want this batch: keep small ones in memory (bounded per store);
            # big ones are served from disk, so memory never grows with batch size. Only a
            # version made by this push alone (with PostgreSQL, other nodes' versions may lie
            # between ``base`` and ``head``; those come through follow_heads).
            if head == base + 1 and h.sessions > 1 and wins <= RECENT_MAX_CELLS:
                batch, upto_read, complete = await trio.to_thread.run_sync(
                    h.writer.changes_since, base, None, RECENT_MAX_CELLS
                )
                size = batch_bytes(batch)
                if complete and upto_read == head and size <= RECENT_MAX_BYTES:
                    h.remember(base, head, batch, site, size)
            self._advance(h, head)
        return head, wins

    def _advance(self, h: StoreHandle, head: int) -> None:
        """A store's head moved to ``head`` (if later): wake its sessions and the
        ``push_listeners``."""
        if head > h.head:
            h.head = head
            h.wake()
            for listener in self.push_listeners:
                listener(h)

    async def _throttle(self, h: StoreHandle, cells: int) -> None:
        """Wait until the store's bucket has paid for ``cells`` (one second of burst)."""
        rate = self.limits.max_push_cells_per_second
        if rate <= 0:
            return
        now = trio.current_time()
        h.paid_until = max(h.paid_until, now) + cells / rate
        wait = h.paid_until - now - 1.0
        if wait > 0:
            log.debug(
                "relay.push_throttled store=%s cells=%d wait=%.3f",
                h.store_id,
                cells,
                wait,
                extra={"store": h.store_id},
            )
            await trio.sleep(wait)  # the rate limit itself (a timer, not a synchronisation)

    async def check_quota(self, h: StoreHandle) -> None:
        """Raise :class:`QuotaExceeded` if the store is over its byte quota."""
        async with h.write_lock:
            await self._check_quota(h)

    async def _check_quota(self, h: StoreHandle) -> None:
        """Raise :class:`QuotaExceeded` if the store is over its byte quota (write lock held)."""
        limit = self.limits.max_store_bytes
        if limit <= 0:
            return
        size = await trio.to_thread.run_sync(h.writer.data_bytes)
        if size > limit:
            raise QuotaExceeded(
                f"store {h.store_id!r} holds {size} bytes, over its quota of {limit} bytes "
                "(--max-store-bytes): the relay accepts no more pushes to it until an operator "
                "raises the quota; nothing of this push was stored, pulls still work"
            )

    async def read_page(
        self,
        h: StoreHandle,
        cursor: int,
        exclude_site: bytes,
        max_cells: int,
        after: tuple[int, str, bytes, str] | None,
    ) -> Page:
        """What a session at ``cursor`` lacks, a version larger than the read budget in parts
        (``after``: continue one): from the recent ring if possible, else disk."""
        if after is None:
            for base, upto, batch, via, _size in h.recent:
                if base == cursor:
                    self.metrics.reads.labels(source="ring").inc()
                    return Page(_excluding(batch, via, exclude_site), upto, upto >= h.head, None)
        self.metrics.reads.labels(source="store").inc()
        async with h.read_lock:
            return await trio.to_thread.run_sync(
                functools.partial(
                    h.reader.read_page,
                    cursor,
                    exclude_site,
                    max_cells,
                    self.read_bytes,
                    after=after,
                )
            )

    async def read(
        self, h: StoreHandle, cursor: int, exclude_site: bytes, max_cells: int
    ) -> tuple[list[Change], int, bool]:
        """What a reader at ``cursor`` lacks, whole versions only (a store reactor): from the
        recent ring if possible, else disk."""
        for base, upto, batch, via, _size in h.recent:
            if base == cursor:
                self.metrics.reads.labels(source="ring").inc()
                return _excluding(batch, via, exclude_site), upto, upto >= h.head
        self.metrics.reads.labels(source="store").inc()
        async with h.read_lock:
            return await trio.to_thread.run_sync(
                h.reader.changes_since, cursor, exclude_site, max_cells, self.read_bytes
            )

    async def record_received(self, h: StoreHandle, site: bytes, upto: int) -> None:
        """Record a peer's acknowledged relay version in the store's peer-tracking table
        (costs one cell of the store's push rate; never beyond the store's head)."""
        await self._throttle(h, 1)
        async with h.write_lock:
            await trio.to_thread.run_sync(h.writer.record_received, site, min(upto, h.head))

    async def charge(self, h: StoreHandle, cells: int = 1) -> None:
        """Charge a message that costs the store work (a hello) to its push rate."""
        await self._throttle(h, cells)
