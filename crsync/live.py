"""Live queries and change notifications for a database file (trio).

One *engine* per database and trio run watches the file for every subscriber
(:meth:`Database.watch <crsync.Database.watch>`, :meth:`Database.changes_feed
<crsync.Database.changes_feed>`, :meth:`Database.on_change <crsync.Database.on_change>`). It
works on a connection of its own (``PRAGMA data_version`` only changes for commits made by
*other* connections), in worker threads, one call at a time, and runs as a trio system task
while it has subscribers.

When does it look? ``watchfiles`` notifications on the database directory (the main file and
its ``-wal``) wake it; a timeout every :data:`FALLBACK_SECONDS` is the fallback. Each look reads
``PRAGMA data_version`` and stops there if no other connection committed.

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
``__anext__`` loses nothing): the engine task owns the results, readers only take them.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import attrs
import trio

from . import feed
from .change import SENTINEL, Change
from .database import Database, connect
from .errors import CrsyncError
from .pack import SqlValue, unpack_pk

log = logging.getLogger(__name__)

FALLBACK_SECONDS = 0.25
"""Longest time between two looks at the file when no notification arrives."""

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

    Holds what both share: the event a reader waits on (replaced after each wake), the error
    the engine hands over, and the closed flag.
    """

    engine: _Engine | None = None

    def __init__(self) -> None:
        self._event = trio.Event()
        self._closed = False
        self._started = False
        self._error: BaseException | None = None

    def _wake(self) -> None:
        self._event.set()
        self._event = trio.Event()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._wake()

    def close(self) -> None:
        """End the subscription (synchronous form)."""
        self._closed = True
        self._wake()
        self._detach()

    async def aclose(self) -> None:
        """End the subscription; a pending or later ``__anext__`` stops the iteration."""
        self.close()

    def _detach(self) -> None:
        eng, self.engine = self.engine, None
        if eng is not None:
            eng.remove(self)


class LiveQuery(_Subscriber):
    """The result of a query, now and after every change of a table it reads.

    Use it as an async iterator (``async for rows in db.watch(sql): ...``), preferably inside
    ``async with`` so the subscription ends with the block (otherwise it ends when the object
    is garbage-collected). Each item is the full result (a list of row tuples). A result equal
    to the previous one is not yielded again.
    """

    def __init__(self, db: Database, sql: str, params: Params = ()) -> None:
        super().__init__()
        self._db = db
        self.sql = sql
        self.params = params
        self.tables: frozenset[str] = frozenset()
        """Tables the query reads (lower-case), known after the first result."""
        self.runs = 0
        """How many times the query ran (the first run included)."""
        self._last: Rows | None = None  # latest result (engine side)
        self._latest: Rows | None = None
        self._version = 0
        self._delivered = 0

    def __aiter__(self) -> LiveQuery:
        return self

    async def __anext__(self) -> Rows:
        if self._closed:
            raise StopAsyncIteration
        if not self._started:
            self._started = True
            try:
                await _engine_for(self._db).add_query(self)
            except BaseException:
                self._started = False
                raise
        while self._version == self._delivered and self._error is None and not self._closed:
            await self._event.wait()
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

    def _publish(self, rows: Rows) -> None:
        self._latest = rows
        self._version += 1
        self._wake()

    async def __aenter__(self) -> LiveQuery:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class ChangeFeed(_Subscriber):
    """Notifications of changed rows of replicated tables (see :class:`RowChange`).

    An async iterator of lists of :class:`RowChange`, one list per look at the file. A late
    reader gets everything that changed meanwhile in one list, one entry per row and site
    (the latest), so memory stays bounded by the number of distinct rows. With a callback
    (:meth:`Database.on_change <crsync.Database.on_change>`) the engine calls it instead; the
    callback must not block (exceptions are logged).
    """

    def __init__(
        self,
        db: Database,
        tables: Sequence[str] | None = None,
        callback: Callable[[list[RowChange]], None] | None = None,
    ) -> None:
        super().__init__()
        self._db = db
        self.tables = None if tables is None else frozenset(t.lower() for t in tables)
        self.callback = callback
        self._pending: dict[tuple[str, tuple[SqlValue, ...], bytes], RowChange] = {}

    async def start(self) -> None:
        """Subscribe now (``__anext__`` does it on first use); changes after this are seen."""
        if not self._started:
            self._started = True
            await _engine_for(self._db).add_feed(self)

    def __aiter__(self) -> ChangeFeed:
        return self

    async def __anext__(self) -> list[RowChange]:
        if self._closed:
            raise StopAsyncIteration
        await self.start()
        while not self._pending and self._error is None and not self._closed:
            await self._event.wait()
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
        if not mine:
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

    async def __aenter__(self) -> ChangeFeed:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


# ---------------------------------------------------------------------------------- engine


def _data_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


class _Engine:
    """Watches one database file for the subscribers of one trio run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.token = trio.lowlevel.current_trio_token()
        self.lock = trio.Lock()
        self.queries: weakref.WeakSet[LiveQuery] = weakref.WeakSet()
        self.feeds: weakref.WeakSet[ChangeFeed] = weakref.WeakSet()
        self.db: Database | None = None
        self.data_version = -1
        self.schema_version = -1
        self.cursor = 0  # last version sealed at the previous look
        self.local_site = b""
        self.running = False
        self.wake = trio.Event()
        self.stop = threading.Event()
        self.looks = 0  # looks that found a commit by another connection
        self.crashed = False
        self.pinned: set[ChangeFeed] = set()  # callback feeds live until closed

    # -- subscribers

    def remove(self, sub: _Subscriber) -> None:
        if isinstance(sub, LiveQuery):
            self.queries.discard(sub)
        elif isinstance(sub, ChangeFeed):
            self.feeds.discard(sub)
            self.pinned.discard(sub)
        self.wake.set()

    async def add_query(self, q: LiveQuery) -> None:
        async with self.lock:
            await trio.to_thread.run_sync(self._open)
            rows, tables = await trio.to_thread.run_sync(self._first_run, q)
            q.tables = tables
            q.runs += 1
            q._last = rows
            q.engine = self
            self.queries.add(q)
            q._publish(rows)
        self._ensure_running()

    async def add_feed(self, f: ChangeFeed) -> None:
        async with self.lock:
            await trio.to_thread.run_sync(self._open)
            f.engine = self
            self.feeds.add(f)
            if f.callback is not None:
                self.pinned.add(f)
        self._ensure_running()

    def _ensure_running(self) -> None:
        if not self.running:
            self.running = True
            self.crashed = False
            self.stop.clear()
            trio.lowlevel.spawn_system_task(self._run, name=f"crsync.live:{self.path}")

    # -- blocking work (engine connection, under self.lock)

    def _open(self) -> None:
        if self.db is not None:
            return
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
    ) -> tuple[list[tuple[LiveQuery, Rows | BaseException]], list[RowChange]] | None:
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
        out: list[tuple[LiveQuery, Rows | BaseException]] = []
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
                        out.append((q, exc))
                        continue
                untracked = any(t not in tracked for t in q.tables)
                if not (schema_changed or untracked or q.tables & changed):
                    continue
                try:
                    rows = conn.execute(q.sql, q.params).fetchall()
                except sqlite3.Error as exc:
                    out.append((q, CrsyncError(f"live query {q.sql!r} failed: {exc}")))
                    continue
                q.runs += 1
                if rows != q._last:
                    q._last = rows
                    out.append((q, rows))
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

    # -- the task

    async def _run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_files)
                while self.queries or self.feeds:
                    await self.wake.wait()
                    self.wake = trio.Event()
                    await self._look_and_publish()
                nursery.cancel_scope.cancel()
        except Exception as exc:  # a system task must not raise
            self.crashed = True
            log.exception("crsync.live.engine_failed path=%s", self.path)
            for sub in [*self.queries, *self.feeds]:
                sub._fail(CrsyncError(f"live query engine stopped: {exc}"))
        finally:
            self.stop.set()
            self.running = False
            with trio.CancelScope(shield=True):
                async with self.lock:
                    # A subscriber that arrived meanwhile started a new task on this
                    # connection: keep it (its first result and our cursor belong together).
                    if not (self.queries or self.feeds) or self.crashed:
                        await trio.to_thread.run_sync(self._close)

    async def _look_and_publish(self) -> None:
        queries = list(self.queries)
        feeds = list(self.feeds)
        async with self.lock:
            if self.db is None:
                await trio.to_thread.run_sync(self._open)
            try:
                res = await trio.to_thread.run_sync(
                    functools.partial(self._look, queries, bool(feeds))
                )
            except CrsyncError as exc:
                # For instance the file is locked longer than the busy timeout: look again at
                # the next notification (data_version is re-read then).
                log.warning("crsync.live.look_failed path=%s error=%s", self.path, exc)
                self.data_version = -1
                return
        if res is None:
            return
        results, notes = res
        for q, r in results:
            if isinstance(r, BaseException):
                q._fail(r)
            else:
                q._publish(r)
        if notes:
            for f in feeds:
                f._publish(notes)

    async def _watch_files(self) -> None:
        from watchfiles import awatch

        db_path = Path(self.path)
        names = {str(db_path), str(db_path) + "-wal"}
        async for _ in awatch(
            db_path.parent,
            watch_filter=lambda _change, path: path in names,
            debounce=50,
            step=2,
            rust_timeout=int(FALLBACK_SECONDS * 1000),
            yield_on_timeout=True,
            recursive=False,
            stop_event=cast(Any, self.stop),  # only is_set() is used, from a thread
        ):
            self.wake.set()


_ENGINES: weakref.WeakKeyDictionary[Database, _Engine] = weakref.WeakKeyDictionary()


def _engine_for(db: Database) -> _Engine:
    path = db.path
    if path is None:
        raise CrsyncError("live queries need a database stored in a file, not in memory")
    eng = _ENGINES.get(db)
    if eng is None or eng.token is not trio.lowlevel.current_trio_token():
        eng = _Engine(path)
        _ENGINES[db] = eng
    return eng


async def wait_for(query: LiveQuery, pred: Callable[[Rows], bool]) -> Rows:
    """Read ``query`` until a result satisfies ``pred``; return that result."""
    async for rows in query:
        if pred(rows):
            return rows
    raise CrsyncError("the live query ended")


__all__ = ["ChangeFeed", "LiveQuery", "RowChange", "query_tables", "wait_for"]
