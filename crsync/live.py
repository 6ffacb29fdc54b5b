"""Live queries and change notifications for a database file (asyncio or trio).

One *engine* per database file and process looks at the file for every subscriber
(:meth:`Database.watch <crsync.Database.watch>`, :meth:`Database.changes_feed
<crsync.Database.changes_feed>`, :meth:`Database.on_change <crsync.Database.on_change>`),
whichever event loop (asyncio or trio, one or several) each subscriber runs on. It works on a
connection of its own (``PRAGMA data_version`` only changes for commits made by *other*
connections), in a thread of its own while it has subscribers, and hands each subscriber its
results in that subscriber's event loop thread.

When does it look? The file's watcher (:mod:`crsync.watcher`, shared with every Peer of the
process on that file) wakes it on notifications about the main file and its ``-wal``, and at
least every :data:`FALLBACK_SECONDS`. Each look reads ``PRAGMA data_version`` and stops there
if no other connection committed.

What changed? For replicated tables, the change feed answers exactly: the engine seals the open
version (see :mod:`crsync.database`) and probes each table's metadata for rows whose ``dbv`` is
above the version sealed at the previous look, through the ``dbv`` index. Every committed write
to a replicated table, local (triggers) or merged, stamps the rows it touches with the open
version, which is above every version sealed before it: so a table changed since the previous
look if and only if such a row exists, whatever the number of writes at one open version and
whichever connection made them. Tables that are not replicated have no such record: queries
reading them are re-run on every commit and their results compared. A schema change re-runs
every query (and finds its tables again).

Which tables does a query read? SQLite says so itself: the query is prepared (``EXPLAIN``) with
an authorizer that records every ``SQLITE_READ`` (views and subqueries included).

A subscriber never queues results: it holds the latest one, and a reader that comes back late
gets that (bursts are coalesced). Reading is safe to cancel (``move_on_after`` around
``__anext__`` loses nothing): the engine owns the results, readers only take them.
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Self, TypeVar

import anyio
import attrs

from . import feed, watcher
from ._async_util import CallSoon, loop_caller
from .change import SENTINEL, Change
from .database import Database, connect
from .errors import CrsyncError
from .pack import SqlValue, unpack_pk

log = logging.getLogger(__name__)

FALLBACK_SECONDS = watcher.TICK_SECONDS
"""Longest time between two looks at the file when no notification arrives."""

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
Rows = list[tuple[Any, ...]]

_ALLOWED = {
    sqlite3.SQLITE_READ,
    sqlite3.SQLITE_SELECT,
    sqlite3.SQLITE_FUNCTION,
    getattr(sqlite3, "SQLITE_RECURSIVE", 33),
}


@attrs.frozen
class RowChange:
    """One row changed by one site since the previous notification."""

    table: str
    pk: tuple[SqlValue, ...]
    """Primary-key values of the row."""
    local: bool
    """True if this database wrote it (any connection or process on the file); False if it
    was merged from another device."""
    site_id: bytes
    columns: frozenset[str]
    """Columns whose value changed (empty for a delete or a bare insert of a pk-only row)."""
    deleted: bool
    """True if the row is deleted now."""
    db_version: int


def query_tables(conn: sqlite3.Connection, sql: str, params: Params = ()) -> frozenset[str]:
    """Tables (lower-case names) a read-only query reads, as SQLite reports them.

    Raises:
        CrsyncError: the SQL is invalid or does more than read.
    """
    tables: set[str] = set()
    refused: list[int] = []

    def authorizer(action: int, a1: str | None, _a2: str | None, _db: str | None, _s: Any) -> int:
        if action == sqlite3.SQLITE_READ and a1:
            tables.add(a1.lower())
        elif action not in _ALLOWED:
            refused.append(action)
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    conn.set_authorizer(authorizer)
    try:
        conn.execute("EXPLAIN " + sql, params).fetchall()
    except sqlite3.Error as exc:
        if refused:
            raise CrsyncError(f"a live query must only read (SELECT): {sql!r}") from None
        raise CrsyncError(f"invalid live query {sql!r}: {exc}") from None
    finally:
        conn.set_authorizer(None)
    if refused:
        raise CrsyncError(f"a live query must only read (SELECT): {sql!r}")
    return frozenset(tables)


class _Subscriber:
    """Something the engine feeds: a live query or a change feed.

    Holds what both share: the event loop it belongs to (bound on first use), the event a
    reader waits on (replaced after each wake), the error the engine hands over, and the
    closed flag. Everything but :meth:`_deliver` runs in that loop's thread.
    """

    engine: _Engine | None = None

    def __init__(self, db: Database) -> None:
        self._db = db
        self._event: anyio.Event | None = None
        self._call_soon: CallSoon | None = None
        self._closed = False
        self._started = False
        self._error: BaseException | None = None

    def _bind(self) -> None:
        if self._call_soon is None:
            self._call_soon = loop_caller()

    def _deliver(self, fn: Callable[[], object]) -> bool:
        """(engine thread) Run ``fn`` in the subscriber's loop; False if that loop ended."""
        call_soon = self._call_soon
        if call_soon is None or self._closed:
            return True
        try:
            call_soon(fn)
        except Exception:  # trio.RunFinishedError, RuntimeError("Event loop is closed")
            return False
        return True

    async def _wait(self) -> None:
        if self._event is None:
            self._event = anyio.Event()
        await self._event.wait()

    def _wake(self) -> None:
        event, self._event = self._event, None
        if event is not None:
            event.set()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def close(self) -> None:
        """End the subscription (synchronous form: the file's engine, if this was its last
        subscriber, releases its connection and the file's watcher just after)."""
        self._closed = True
        self._wake()
        self._detach()

    async def aclose(self) -> None:
        """End the subscription; a pending or later ``__anext__`` stops the iteration. The
        last subscriber of a file returns once the engine released its connection and the
        file's watcher (shielded from cancellation: a few milliseconds)."""
        self._closed = True
        self._wake()
        stopped = self._detach()
        if stopped is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(stopped.thread.join)

    def _detach(self) -> _Engine | None:
        """Leave the engine; the engine if that stopped it."""
        eng, self.engine = self.engine, None
        if eng is not None and eng.remove(self):
            return eng
        return None

    async def _subscribe(self, add: Callable[[_Engine], T]) -> T:
        """Join the file's engine (in a worker thread: the first result is computed there)."""
        self._started = True
        try:
            self._bind()
            path = _engine_path(self._db)
            return await anyio.to_thread.run_sync(_join, path, add)
        except BaseException:
            self._started = False
            raise

    def __aiter__(self) -> Self:
        return self

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class LiveQuery(_Subscriber):
    """The result of a query, now and after every change of a table it reads.

    Use it as an async iterator (``async for rows in db.watch(sql): ...``), preferably inside
    ``async with`` so the subscription ends with the block (otherwise it ends when the object
    is garbage-collected). Each item is the full result (a list of row tuples). A result equal
    to the previous one is not yielded again.
    """

    def __init__(self, db: Database, sql: str, params: Params = ()) -> None:
        super().__init__(db)
        self.sql = sql
        self.params = params
        self.tables: frozenset[str] = frozenset()
        """Tables the query reads (lower-case), known after the first result."""
        self.runs = 0
        """How many times the query ran (the first run included)."""
        self._last: Rows | None = None  # latest result (engine side)
        self._made = 0  # results the engine made (engine side)
        self._latest: Rows | None = None
        self._version = 0  # the number of the latest result received
        self._delivered = 0  # ... and of the latest result read

    async def __anext__(self) -> Rows:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            first = await self._subscribe(lambda eng: eng.add_query(self))
            self._publish(*first)
        while self._version == self._delivered and self._error is None and not self._closed:
            await self._wait()
        if self._error is not None:
            err, self._error = self._error, None
            self._closed = True
            self._detach()
            raise err
        if self._closed:
            raise StopAsyncIteration
        self._delivered = self._version
        assert self._latest is not None
        return self._latest

    def _publish(self, rows: Rows, number: int) -> None:
        if number <= self._version:  # an older result arriving late (the first one)
            return
        self._latest = rows
        self._version = number
        self._wake()


class ChangeFeed(_Subscriber):
    """Notifications of changed rows of replicated tables (see :class:`RowChange`).

    An async iterator of lists of :class:`RowChange`, one list per look at the file. A late
    reader gets everything that changed meanwhile in one list, one entry per row and site
    (the latest), so memory stays bounded by the number of distinct rows. With a callback
    (:meth:`Database.on_change <crsync.Database.on_change>`) the engine calls it instead, in
    the event loop thread that subscribed; the callback must not block (exceptions are logged).
    """

    def __init__(
        self,
        db: Database,
        tables: Sequence[str] | None = None,
        callback: Callable[[list[RowChange]], None] | None = None,
    ) -> None:
        super().__init__(db)
        self.tables = None if tables is None else frozenset(t.lower() for t in tables)
        self.callback = callback
        self._pending: dict[tuple[str, tuple[SqlValue, ...], bytes], RowChange] = {}

    async def start(self) -> None:
        """Subscribe now (``__anext__`` does it on first use); changes after this are seen."""
        if not self._started:
            await self._subscribe(lambda eng: eng.add_feed(self))

    async def __anext__(self) -> list[RowChange]:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        while not self._pending and self._error is None and not self._closed:
            await self._wait()
        if self._error is not None:
            err, self._error = self._error, None
            await self.aclose()
            raise err
        if self._closed and not self._pending:
            raise StopAsyncIteration
        out = list(self._pending.values())
        self._pending.clear()
        return out

    def _publish(self, changes: list[RowChange]) -> None:
        mine = [c for c in changes if self.tables is None or c.table.lower() in self.tables]
        if not mine or self._closed:
            return
        if self.callback is not None:
            try:
                self.callback(mine)
            except Exception:
                log.exception("crsync.live.callback_failed tables=%s", sorted(self.tables or ()))
            return
        for c in mine:
            self._pending.pop((c.table, c.pk, c.site_id), None)
            self._pending[(c.table, c.pk, c.site_id)] = c
        self._wake()

    async def __aenter__(self) -> Self:
        await self.start()
        return self


# ---------------------------------------------------------------------------------- engine


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


_REGISTRY = threading.Lock()  # guards _ENGINES and every engine's subscribers
_ENGINES: dict[str, _Engine] = {}


def _engine_path(db: Database) -> str:
    path = db.path
    if path is None:
        raise CrsyncError("live queries need a database stored in a file, not in memory")
    return os.path.realpath(path)


def _join(path: str, add: Callable[[_Engine], T]) -> T:
    """(worker thread) The file's engine, started if need be, runs ``add(engine)``."""
    with _REGISTRY:
        eng = _ENGINES.get(path)
        if eng is None:
            eng = _ENGINES[path] = _Engine(path)
            eng.start()
        eng.joining += 1
    try:
        return add(eng)
    finally:
        with _REGISTRY:
            eng.joining -= 1
        eng.poke.set()  # (an engine left without subscribers stops)


class _Engine:
    """Watches one database file for the subscribers of the whole process.

    Its thread looks at the file when poked (by the file's watcher, or when a subscriber
    leaves) and stops once no subscriber is left. Its connection is used by one thread at a
    time (``lock``): its own, or a worker thread computing a new query's first result.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.queries: weakref.WeakSet[LiveQuery] = weakref.WeakSet()
        self.feeds: weakref.WeakSet[ChangeFeed] = weakref.WeakSet()
        self.pinned: set[ChangeFeed] = set()  # callback feeds live until closed
        self.joining = 0  # worker threads adding a subscriber now
        self.stopped = False
        self.db: Database | None = None
        self.data_version = -1
        self.schema_version = -1
        self.cursor = 0  # last version sealed at the previous look
        self.local_site = b""
        self.poke = threading.Event()
        self.looks = 0  # looks that found a commit by another connection
        self.thread = threading.Thread(target=self._run, name=f"crsync.live:{path}", daemon=True)
        self.watch: watcher.Subscription | None = None

    def start(self) -> None:
        self.watch = watcher.subscribe(self.path, self.poke.set, FALLBACK_SECONDS)
        self.thread.start()

    # -- subscribers

    def remove(self, sub: _Subscriber) -> bool:
        """Unsubscribe; True if that was the last subscriber (the engine's thread then stops
        at once: a new subscriber starts another engine)."""
        with _REGISTRY:
            if isinstance(sub, LiveQuery):
                self.queries.discard(sub)
            elif isinstance(sub, ChangeFeed):
                self.feeds.discard(sub)
                self.pinned.discard(sub)
            last = not (self.stopped or self.queries or self.feeds or self.joining)
            if last:
                self._stop()
        self.poke.set()
        return last

    def _register(self, sub: _Subscriber) -> None:
        with _REGISTRY:
            if self.stopped:
                raise CrsyncError("the live query engine stopped; subscribe again")
            sub.engine = self
            if isinstance(sub, LiveQuery):
                self.queries.add(sub)
            elif isinstance(sub, ChangeFeed):
                self.feeds.add(sub)
                if sub.callback is not None:
                    self.pinned.add(sub)

    def add_query(self, q: LiveQuery) -> tuple[Rows, int]:
        """(worker thread) The query's first result and its number; q is subscribed."""
        with self.lock:
            self._open()
            rows, tables = self._first_run(q)
            q.tables = tables
            q.runs += 1
            q._last = rows
            q._made += 1
            number = q._made
            self._register(q)
        return rows, number

    def add_feed(self, f: ChangeFeed) -> None:
        """(worker thread) Subscribe a change feed: changes after this are seen."""
        with self.lock:
            self._open()
            self._register(f)

    # -- blocking work (engine connection, under self.lock)

    def _open(self) -> None:
        if self.db is not None:
            return
        if self.stopped:
            raise CrsyncError("the live query engine stopped; subscribe again")
        db = connect(self.path, check_same_thread=False)
        self.db = db
        self.local_site = db.site_id
        self.data_version = _data_version(db.conn)
        self.schema_version = db.conn.execute("PRAGMA schema_version").fetchone()[0]
        self.cursor = feed.seal(db)

    def _close(self) -> None:
        if self.db is not None:
            db, self.db = self.db, None
            db.close()

    def _first_run(self, q: LiveQuery) -> tuple[Rows, frozenset[str]]:
        assert self.db is not None
        conn = self.db.conn
        tables = query_tables(conn, q.sql, q.params)
        try:
            rows = conn.execute(q.sql, q.params).fetchall()
        except sqlite3.Error as exc:
            raise CrsyncError(f"live query {q.sql!r} failed: {exc}") from None
        return rows, tables

    def _look(
        self, queries: list[LiveQuery], feeds: bool
    ) -> tuple[list[tuple[LiveQuery, Rows | BaseException, int]], list[RowChange]] | None:
        """One look at the file: None if no other connection committed since the last one."""
        assert self.db is not None
        db = self.db
        conn = db.conn
        dv = _data_version(conn)
        if dv == self.data_version:
            return None
        self.data_version = dv
        self.looks += 1
        sv = conn.execute("PRAGMA schema_version").fetchone()[0]
        schema_changed = sv != self.schema_version
        self.schema_version = sv
        # Seal first: every write committed after this carries a higher version, so it is
        # found by the next look (data_version was read before, so there will be one).
        upto = feed.seal(db)
        since = self.cursor
        self.cursor = upto
        out: list[tuple[LiveQuery, Rows | BaseException, int]] = []
        notes: list[RowChange] = []
        with feed.snapshot(db):
            tracked = {name.lower() for name in feed.tracked_names(db)}
            changed: set[str] = set()
            if upto > since:
                changed = {name.lower() for name in feed.changed_tables(db, since, upto)}
                if feeds and changed:
                    notes = self._row_changes(since, upto, changed)
            for q in queries:
                if schema_changed:
                    try:
                        q.tables = query_tables(conn, q.sql, q.params)
                    except CrsyncError as exc:
                        out.append((q, exc, 0))
                        continue
                untracked = any(t not in tracked for t in q.tables)
                if not (schema_changed or untracked or q.tables & changed):
                    continue
                try:
                    rows = conn.execute(q.sql, q.params).fetchall()
                except sqlite3.Error as exc:
                    out.append((q, CrsyncError(f"live query {q.sql!r} failed: {exc}"), 0))
                    continue
                q.runs += 1
                if rows != q._last:
                    q._last = rows
                    q._made += 1
                    out.append((q, rows, q._made))
        return out, notes

    def _row_changes(self, since: int, upto: int, tables: set[str]) -> list[RowChange]:
        assert self.db is not None
        db = self.db
        names = [name for name in feed.tracked_names(db) if name.lower() in tables]
        changes = feed.read_changes(db, since, upto, names)
        rows: dict[tuple[str, bytes, bytes], list[Change]] = {}
        for c in changes:
            rows.setdefault((c.table, c.pk, c.site_id), []).append(c)
        out = []
        for (table, pk, site), cs in rows.items():
            cl = max(c.cl for c in cs)
            out.append(
                RowChange(
                    table=table,
                    pk=unpack_pk(pk),
                    local=site == self.local_site,
                    site_id=site,
                    columns=frozenset(c.cid for c in cs if c.cid != SENTINEL),
                    deleted=cl % 2 == 0,
                    db_version=max(c.db_version for c in cs),
                )
            )
        return out

    # -- the thread

    def _run(self) -> None:
        try:
            while True:
                self.poke.wait()
                self.poke.clear()
                if not self._look_for_subscribers():
                    return
        except Exception as exc:
            log.exception("crsync.live.engine_failed path=%s", self.path)
            with _REGISTRY:
                self._stop()
                subs: list[_Subscriber] = [*self.queries, *self.feeds]
            error = CrsyncError(f"live query engine stopped: {exc}")
            for sub in subs:
                sub._deliver(functools.partial(sub._fail, error))
        finally:
            with self.lock:
                self._close()
            if self.watch is not None:
                self.watch.close()

    def _look_for_subscribers(self) -> bool:
        """One look for the subscribers there are now; False once none is left. (A function of
        its own: the thread holds them only while it looks, so that a subscriber dropped
        without ``close()`` is garbage-collected and leaves the WeakSets.)"""
        with _REGISTRY:
            if not (self.queries or self.feeds or self.joining):
                self._stop()
            if self.stopped:
                return False
        self._look_and_publish()
        return True

    def _stop(self) -> None:
        """(under _REGISTRY) No new subscriber joins this engine; the next one starts another."""
        self.stopped = True
        if _ENGINES.get(self.path) is self:
            del _ENGINES[self.path]

    def _look_and_publish(self) -> None:
        with self.lock:
            # The subscribers as of this look, taken under the connection's lock (where they
            # are added, with their first result): one added meanwhile is part of the look that
            # consumes the commit it may not have seen.
            with _REGISTRY:
                queries, feeds = list(self.queries), list(self.feeds)
            if self.db is None:
                self._open()
            try:
                res = self._look(queries, bool(feeds))
            except CrsyncError as exc:
                # For instance the file is locked longer than the busy timeout: look again at
                # the next notification (data_version is re-read then).
                log.warning("crsync.live.look_failed path=%s error=%s", self.path, exc)
                self.data_version = -1
                return
        if res is None:
            return
        results, notes = res
        gone: list[_Subscriber] = []
        for q, r, number in results:
            if isinstance(r, BaseException):
                ok = q._deliver(functools.partial(q._fail, r))
            else:
                ok = q._deliver(functools.partial(q._publish, r, number))
            if not ok:
                gone.append(q)
        if notes:
            for f in feeds:
                if not f._deliver(functools.partial(f._publish, notes)):
                    gone.append(f)
        for sub in gone:  # their event loop ended
            self.remove(sub)


async def wait_for(query: LiveQuery, pred: Callable[[Rows], bool]) -> Rows:
    """Read ``query`` until a result satisfies ``pred``; return that result."""
    async for rows in query:
        if pred(rows):
            return rows
    raise CrsyncError("the live query ended")


__all__ = ["ChangeFeed", "LiveQuery", "RowChange", "query_tables", "wait_for"]
