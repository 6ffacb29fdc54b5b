"""Relay stores in PostgreSQL: every store of a relay cluster in one schema.

The same store as :class:`crsync_relay.store.RelayStore` (the interface is
:class:`crsync_relay.store_api.StoreBackend`), for relay nodes that share one database:
the merge keeps the cell-level rules in Python (:mod:`crsync.merge_rules`, exactly as the
SQLite store applies them) and only the storage in SQL.

Layout (schema ``crsync_relay``; every table keyed by ``store_id`` first, so the layout can be
distributed by store id, e.g. Citus ``create_distributed_table(..., 'store_id')`` with the
tables co-located, without changes):

- ``layout``: one row, the layout version (a newer layout is refused, an older one upgraded).
- ``stores``: one row per store: ``epoch``, ``head`` (the latest relay version), ``created``,
  ``schema_gen`` (bumped whenever the store's announced schema changes, so nodes refresh
  their cached copy), ``cell_bytes`` (the store's quota figure, kept up to date by every
  write that adds or removes cells).
- ``meta``: other per-store entries (``relay_site``, ``reactor_cursor``, ...), typed values.
- ``cells``: the latest state of every cell, keyed ``(store_id, tbl, pk, cid)``, indexed by
  ``(store_id, version, tbl, pk, cid)`` for catch-up reads.
- ``peers``, ``tables`` (the announced schema), ``reactor_set_aside``.

Table and column names are stored as ``bytea`` (their UTF-8 bytes): they are data, compare
bytewise exactly as SQLite's BINARY collation does, and may hold any character. Values are a
kind (0 NULL, 1 integer, 2 real, 3 text, 4 blob) and ``bytea`` data (integers as 8 bytes
big-endian two's complement, reals as IEEE 754 binary64 big-endian, text as its UTF-8 bytes):
every SQLite value, -0.0 and text with NUL included, is kept bit for bit.

Relay versions without gaps visible to peers
--------------------------------------------
Every transaction that creates a relay version first locks its store's ``stores`` row
(``SELECT ... FOR UPDATE``, READ COMMITTED) and holds the lock until it commits or rolls
back; it takes ``head + 1`` as its version, writes its cells and sets ``head`` in the same
transaction. So

1. two versions of one store are never allocated concurrently: version ``v + 1`` is read
   from the row only after the transaction of ``v`` released the lock, i.e. committed
   (READ COMMITTED re-reads the newest committed row after waiting on the lock). A rolled
   back transaction never updated ``head``, so its version number is taken by the next one:
   no holes. Commit order is version order.
2. a reader takes ``head`` and the cells in one REPEATABLE READ snapshot and reads only
   versions ``<= head``: the snapshot holds the transaction that set ``head`` and therefore,
   by 1, every earlier version's transaction; a later version's cells are written by the
   transaction that raises ``head``, so they are never visible without it. A peer whose
   cursor says ``v`` has therefore seen every cell of every version up to ``v``, and nothing
   it has not seen can appear later below ``v``.

Stores never share a lock: pushes to different stores run in parallel. A push is
acknowledged only after ``COMMIT`` returned (durable with the server's default
``synchronous_commit = on``; a node that loses its connection during ``COMMIT`` reports a
failure and the device re-pushes: merging is idempotent).

Calls are synchronous (psycopg 3 has no trio support; the relay runs store calls in worker
threads), each borrows a connection from the :class:`PgDatabase`'s pool for its duration:
one pool per process, shared by every store.

psycopg is an optional dependency (``pip install 'crsync[postgres]'``), imported only when a
:class:`PgDatabase` is made.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import struct
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from crsync.change import Change
from crsync.errors import CrsyncError, InvalidChangeError
from crsync.merge_rules import RowState
from crsync.pack import SqlValue
from crsync.protocol import TableSchema, quote

from . import store_rules as rules
from .datadir import check_store_id
from .store import RelayStore
from .store_api import StoreBackend
from .store_rules import Collected, DeviceInfo, GcStats, Page, PageRequest, PeerPosition, Push

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

SCHEMA = "crsync_relay"
LAYOUT_VERSION = 2
"""1: the first layout; 2: collected tombstones (``graves``) and ``peers.departed``."""
EXTRA_HINT = "install the relay's PostgreSQL support: pip install 'crsync[postgres]'"

_S = SCHEMA
_DDL = [
    f"CREATE SCHEMA IF NOT EXISTS {_S}",
    f"CREATE TABLE IF NOT EXISTS {_S}.layout (one boolean PRIMARY KEY DEFAULT true "
    "CHECK (one), version integer NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {_S}.stores (store_id text PRIMARY KEY, epoch text NOT NULL, "
    "head bigint NOT NULL DEFAULT 0, created double precision NOT NULL, "
    "schema_gen bigint NOT NULL DEFAULT 0, cell_bytes bigint NOT NULL DEFAULT 0)",
    f"CREATE TABLE IF NOT EXISTS {_S}.meta (store_id text NOT NULL, key text NOT NULL, "
    "kind smallint NOT NULL, data bytea, PRIMARY KEY (store_id, key))",
    f"CREATE TABLE IF NOT EXISTS {_S}.cells (store_id text NOT NULL, tbl bytea NOT NULL, "
    "pk bytea NOT NULL, cid bytea NOT NULL, kind smallint NOT NULL, data bytea, "
    "col_version bigint NOT NULL, site_id bytea NOT NULL, cl bigint NOT NULL, "
    "seq bigint NOT NULL, version bigint NOT NULL, via bytea, "
    "PRIMARY KEY (store_id, tbl, pk, cid))",
    f"CREATE INDEX IF NOT EXISTS cells_version ON {_S}.cells (store_id, version, tbl, pk, cid)",
    f"CREATE TABLE IF NOT EXISTS {_S}.peers (store_id text NOT NULL, site_id bytea NOT NULL, "
    "pushed_upto bigint NOT NULL DEFAULT 0, received_upto bigint NOT NULL DEFAULT 0, "
    "last_seen double precision, key_hash bytea, PRIMARY KEY (store_id, site_id))",
    f"CREATE TABLE IF NOT EXISTS {_S}.tables (store_id text NOT NULL, tbl bytea NOT NULL, "
    "pk text NOT NULL, columns text NOT NULL, not_null text, intkey boolean, "
    "PRIMARY KEY (store_id, tbl))",
    f"CREATE TABLE IF NOT EXISTS {_S}.reactor_set_aside (store_id text NOT NULL, "
    "base bigint NOT NULL, upto bigint NOT NULL, reason text NOT NULL, "
    "at double precision NOT NULL, PRIMARY KEY (store_id, base))",
    # Who created each store (a token subject): the per-subject store caps. A reference table
    # under Citus (small, read by creator).
    f"CREATE TABLE IF NOT EXISTS {_S}.store_creators (store_id text PRIMARY KEY, "
    "creator text NOT NULL, created_at double precision NOT NULL)",
    f"CREATE INDEX IF NOT EXISTS store_creators_creator ON {_S}.store_creators (creator)",
    # Layout 2: collected tombstones (deletes below the horizon: the row's causal length and
    # the delete's relay version) and departed devices.
    f"CREATE TABLE IF NOT EXISTS {_S}.graves (store_id text NOT NULL, tbl bytea NOT NULL, "
    "pk bytea NOT NULL, cl bigint NOT NULL, version bigint NOT NULL, "
    "PRIMARY KEY (store_id, tbl, pk))",
    f"CREATE INDEX IF NOT EXISTS graves_version ON {_S}.graves (store_id, version, tbl, pk)",
    f"ALTER TABLE {_S}.peers ADD COLUMN IF NOT EXISTS departed boolean NOT NULL DEFAULT false",
]
_PER_STORE_TABLES = (
    "cells",
    "graves",
    "peers",
    "tables",
    "reactor_set_aside",
    "meta",
    "stores",
)
# (store_creators is not dropped with a store: a subject's cap counts the stores it created.)
_STORE_ROW_KEYS = frozenset({"epoch", "head", "created"})  # relay_meta keys kept in ``stores``
_DDL_LOCK = 0x63727379  # advisory lock key serialising layout creation ("crsy")
CELL_OVERHEAD = 96
"""Bytes counted per cell on top of its keys and value (tuple header, clocks, index entries):
the quota figure, an estimate of what a cell costs PostgreSQL."""


class PgStoreError(CrsyncError):
    """The PostgreSQL store backend cannot do what was asked (missing extra, no such store,
    a layout written by a newer crsync, a store that exists already)."""


def _load_psycopg() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise PgStoreError(f"PostgreSQL stores need psycopg ({exc}); {EXTRA_HINT}") from None
    return psycopg, psycopg_pool


def pg_pool_errors() -> tuple[type[BaseException], ...]:
    """The pool's own errors (a timeout waiting for a connection, a closed pool)."""
    _, pool_module = _load_psycopg()
    return (pool_module.PoolTimeout, pool_module.PoolClosed)


NODE_APP_NAME = "crsync-relay-node"
"""``application_name`` of a serving relay node's LISTEN connection: one per node, so that
offline operator commands can refuse while nodes serve the database."""

HEADS_CHANNEL = "crsync_relay_heads"
"""The channel name the relay is meant to use for ``notify_channel``."""


def parse_head_notification(payload: str) -> tuple[str, int]:
    """``(store id, head)`` from a head notification's payload (see ``notify_channel``)."""
    store, _, head = payload.rpartition(" ")
    return store, int(head)


# ---------------------------------------------------------------------------- values


def encode_value(v: SqlValue) -> tuple[int, bytes | None]:
    """An SQLite value as ``(kind, data)``, exactly (see the module docstring)."""
    if v is None:
        return 0, None
    t = type(v)
    if t is int:
        return 1, v.to_bytes(8, "big", signed=True)  # type: ignore[union-attr]
    if t is float:
        return 2, struct.pack(">d", v)
    if t is str:
        try:
            return 3, v.encode("utf-8")  # type: ignore[union-attr]
        except UnicodeEncodeError:
            raise InvalidChangeError("a text value is not valid UTF-8") from None
    if t is bytes:
        return 4, v  # type: ignore[return-value]
    raise InvalidChangeError(f"value of type {t.__name__} is not an SQLite value")


def decode_value(kind: int, data: bytes | None) -> SqlValue:
    """The value :func:`encode_value` encoded."""
    if kind == 0:
        return None
    assert data is not None
    if kind == 1:
        return int.from_bytes(data, "big", signed=True)
    if kind == 2:
        return float(struct.unpack(">d", data)[0])
    if kind == 3:
        return bytes(data).decode("utf-8")
    return bytes(data)


def _cell_bytes(tbl: bytes, pk: bytes, cid: bytes, data: bytes | None) -> int:
    return CELL_OVERHEAD + len(tbl) + len(pk) + len(cid) + (len(data) if data else 0)


def _schema_from_rows(rows: list[tuple[Any, ...]]) -> tuple[dict[str, TableSchema], set[str]]:
    schema = {
        bytes(t).decode(): TableSchema(
            tuple(json.loads(pk)),
            tuple(json.loads(cols)),
            tuple(json.loads(notnull)) if notnull else (),
            bool(intkey),
        )
        for t, pk, cols, notnull, intkey in rows
    }
    unconstrained = {bytes(r[0]).decode() for r in rows if r[3] is None}
    return schema, unconstrained


def _schema_row(store_id: str, t: str, s: TableSchema) -> tuple[Any, ...]:
    return (
        store_id,
        t.encode(),
        json.dumps(list(s.pk)),
        json.dumps(list(s.columns)),
        json.dumps(list(s.notnull)),
        bool(s.integer_key),
    )


_CELL_COLS = "tbl, pk, cid, kind, data, col_version, site_id, cl, seq, version, via"
_SENTINEL_SQL = "'\\x2d31'::bytea"  # the cid "-1"
_ZERO_SITE_SQL = "'\\x" + "00" * 16 + "'::bytea"  # COLLECTED_SITE
_TOMBSTONE = f"cid = {_SENTINEL_SQL} AND mod(cl, 2) = 0"
# A read's rows: the change's fields (a grave's db_version 0), the pushing site, the value's
# length, and the relay version (ordering and cuts). Graves come out as collected tombstones.
_READ_COLS = (
    "tbl, pk, cid, kind, data, col_version, version, site_id, cl, seq, "
    "coalesce(via, site_id), coalesce(octet_length(data), 0), version"
)
_GRAVE_READ_COLS = (
    f"tbl, pk, {_SENTINEL_SQL}, 0::smallint, NULL::bytea, cl, 0::bigint, {_ZERO_SITE_SQL}, cl, "
    f"0::bigint, {_ZERO_SITE_SQL}, 0, version"
)


def _grave_bytes(tbl: bytes, pk: bytes) -> int:
    """What a collected tombstone counts against the quota: the tombstone cell it was."""
    return _cell_bytes(tbl, pk, b"-1", None)


_GRAVE_BYTES_SQL = f"{CELL_OVERHEAD + 2} + octet_length(tbl) + octet_length(pk)"


def _version_of(r: tuple[Any, ...]) -> int:
    return int(r[12])


def _size_of(r: tuple[Any, ...]) -> int:
    return rules.cell_size(r[1], r[11])


def _change(r: tuple[Any, ...]) -> Change:
    return Change(
        bytes(r[0]).decode(),
        bytes(r[1]),
        bytes(r[2]).decode(),
        decode_value(r[3], r[4]),
        r[5],
        r[6],
        bytes(r[7]),
        r[8],
        r[9],
    )


# ---------------------------------------------------------------------------- database


class PgDatabase:
    """A PostgreSQL database holding relay stores: one connection pool for the process, the
    layout (created idempotently), and what concerns whole stores (list, drop, export to and
    import from a SQLite store file, epochs)."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        timeout: float = 30.0,
        create: bool = True,
        notify_channel: str | None = None,
    ) -> None:
        """Open the pool and check (or, with ``create``, make) the layout.

        ``notify_channel``: every merge that makes a relay version also sends
        ``NOTIFY <channel>, '<store id> <head>'`` in its transaction (delivered when it
        commits, never for a rolled back one), for nodes that fan changes out (see
        :func:`parse_head_notification`).

        Raises:
            PgStoreError: psycopg is missing, the database cannot be reached (PostgreSQL's
                reason), or the layout is newer than this crsync.
        """
        pg, pool_module = _load_psycopg()
        self._psycopg = pg
        self.notify_channel = notify_channel
        try:  # fail fast, with PostgreSQL's own reason (a pool would only time out)
            pg.connect(conninfo, connect_timeout=max(1, int(timeout))).close()
        except pg.OperationalError as exc:
            raise PgStoreError(f"cannot connect to PostgreSQL: {exc}".strip()) from None
        self.pool: psycopg_pool.ConnectionPool[psycopg.Connection[tuple[Any, ...]]] = (
            pool_module.ConnectionPool(
                conninfo,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                kwargs={"autocommit": True},
                open=False,
                name="crsync-relay",
            )
        )
        self.pool.open(wait=True, timeout=timeout)
        try:
            self._ensure_layout(create)
        except BaseException:
            self.pool.close()
            raise

    def close(self) -> None:
        """Close the pool (every store of this database is unusable afterwards)."""
        self.pool.close()

    def lost_connection(self, exc: BaseException) -> bool:
        """True if ``exc`` says a connection was lost (not a refusal, not a timeout waiting
        for the pool): a call that failed so may be run again on another connection."""
        pg = self._psycopg
        if not isinstance(exc, pg.OperationalError) or isinstance(exc, pg_pool_errors()):
            return False
        state = exc.sqlstate
        return state is None or state.startswith(("08", "57P"))

    def __enter__(self) -> PgDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self, *, snapshot: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A connection from the pool inside one transaction: committed when the block ends,
        rolled back if it raises. ``snapshot``: REPEATABLE READ, READ ONLY (one consistent
        view for several statements); else READ COMMITTED, whatever the server's default
        (the version allocation relies on it: see the module docstring). Both are part of the
        ``BEGIN`` statement: no extra round trip."""
        levels = self._psycopg.IsolationLevel
        with self.pool.connection() as conn:
            conn.isolation_level = levels.REPEATABLE_READ if snapshot else levels.READ_COMMITTED
            conn.read_only = snapshot
            with conn.transaction():
                yield conn

    def _ensure_layout(self, create: bool) -> None:
        errors = self._psycopg.errors
        with self.transaction() as conn:
            try:
                with conn.transaction():  # a savepoint: the table may not exist yet
                    row = conn.execute(f"SELECT version FROM {_S}.layout").fetchone()
            except errors.UndefinedTable:
                row = None
            if row is not None and row[0] == LAYOUT_VERSION:
                return
            if row is not None and row[0] > LAYOUT_VERSION:
                raise PgStoreError(
                    f"the {_S} schema has layout version {row[0]}, written by a newer crsync "
                    f"(this one knows up to {LAYOUT_VERSION}); upgrade crsync"
                )
            if row is None and not create:
                raise PgStoreError(f"the database has no relay stores (no {_S} schema)")
            # Several nodes may start at once: one creates (or upgrades) the layout, the
            # others wait. Every statement is idempotent: an older layout gains what it lacks.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
            for stmt in _DDL:
                conn.execute(stmt)
            conn.execute(
                f"INSERT INTO {_S}.layout (one, version) VALUES (true, %s) "
                "ON CONFLICT (one) DO UPDATE SET version = greatest(layout.version, "
                "excluded.version)",
                (LAYOUT_VERSION,),
            )

    def open_store(
        self,
        store_id: str,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.time,
        default_max_offline: float = rules.DEFAULT_MAX_OFFLINE,
    ) -> PgRelayStore:
        """A store (created with a fresh epoch if missing and ``create``); ``clock`` and
        ``default_max_offline`` as for :class:`PgRelayStore`."""
        return PgRelayStore(
            self, store_id, create=create, clock=clock, default_max_offline=default_max_offline
        )

    def store_ids(self) -> list[str]:
        """Every store's id, sorted."""
        with self.pool.connection() as conn:
            return [r[0] for r in conn.execute(f"SELECT store_id FROM {_S}.stores ORDER BY 1")]

    def has_store(self, store_id: str) -> bool:
        """True if the store exists."""
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT 1 FROM {_S}.stores WHERE store_id = %s", (store_id,)
            ).fetchone()
        return row is not None

    def drop_store(self, store_id: str) -> None:
        """Remove a store and everything it holds (one transaction)."""
        with self.transaction() as conn:
            if not self._lock_store(conn, store_id):
                raise PgStoreError(f"no store {store_id!r} in the database")
            for table in _PER_STORE_TABLES:
                conn.execute(f"DELETE FROM {_S}.{table} WHERE store_id = %s", (store_id,))

    @staticmethod
    def _lock_store(conn: psycopg.Connection[Any], store_id: str) -> tuple[Any, ...] | None:
        return conn.execute(
            f"SELECT head, schema_gen, epoch FROM {_S}.stores WHERE store_id = %s FOR UPDATE",
            (store_id,),
        ).fetchone()

    def store_epoch(self, store_id: str) -> str:
        """A store's epoch (the counterpart of :meth:`RelayStore.file_epoch`)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT epoch FROM {_S}.stores WHERE store_id = %s", (store_id,)
            ).fetchone()
        if row is None:
            raise PgStoreError(f"no store {store_id!r} in the database")
        return str(row[0])

    def set_epoch(self, store_id: str, epoch: str) -> None:
        """Give a store a new epoch (the counterpart of :meth:`RelayStore.set_file_epoch`)."""
        with self.transaction() as conn:
            if not self._lock_store(conn, store_id):
                raise PgStoreError(f"no store {store_id!r} in the database")
            conn.execute(
                f"UPDATE {_S}.stores SET epoch = %s WHERE store_id = %s", (epoch, store_id)
            )

    def serving_nodes(self) -> int:
        """How many relay nodes serve this database now (their LISTEN connections)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                "AND datname = current_database() AND pid <> pg_backend_pid()",
                (NODE_APP_NAME,),
            ).fetchone()
        return int(row[0]) if row else 0

    def require_stopped(self) -> None:
        """Raise PgStoreError if a relay node serves the database (a node keeps epochs and
        schemas in memory: operator rewrites need every node stopped)."""
        n = self.serving_nodes()
        if n:
            raise PgStoreError(f"{n} relay node(s) serve this database; stop every node first")

    def heads(self, store_ids: Sequence[str]) -> dict[str, int]:
        """The heads of some stores in one query (a relay node's safety re-read of the stores
        it has open); stores missing from the database are left out."""
        with self.pool.connection() as conn:
            return {
                str(r[0]): int(r[1])
                for r in conn.execute(
                    f"SELECT store_id, head FROM {_S}.stores WHERE store_id = ANY(%s)",
                    (list(store_ids),),
                )
            }

    def ping(self, timeout: float = 2.0) -> bool:
        """True if a pooled connection answers ``SELECT 1`` within ``timeout`` seconds (the
        relay's health check); a failure makes the pool check its idle connections, so that
        broken ones are replaced once the server is back."""
        try:
            with self.pool.connection(timeout=timeout) as conn:
                conn.execute("SELECT 1")
            return True
        except Exception:
            with contextlib.suppress(Exception):
                self.pool.check()
            return False

    def stores_behind(self) -> list[str]:
        """Stores whose reactor cursor is behind their head (one query), by id."""
        with self.pool.connection() as conn:
            rows = conn.execute(
                f"SELECT s.store_id, s.head, m.kind, m.data FROM {_S}.stores s "
                f"LEFT JOIN {_S}.meta m ON m.store_id = s.store_id AND m.key = 'reactor_cursor' "
                "WHERE s.head > 0 ORDER BY 1"
            ).fetchall()
        out = []
        for sid, head, kind, data in rows:
            cursor = 0 if kind is None else decode_value(kind, data)
            if int(cursor or 0) < int(head):
                out.append(str(sid))
        return out

    def reactor_behind(self, store_id: str) -> bool:
        """True if a store's reactor cursor is behind its head (False if no such store)."""
        with self.pool.connection() as conn:
            row = conn.execute(
                f"SELECT s.head, m.kind, m.data FROM {_S}.stores s LEFT JOIN {_S}.meta m "
                "ON m.store_id = s.store_id AND m.key = 'reactor_cursor' WHERE s.store_id = %s",
                (store_id,),
            ).fetchone()
        if row is None:
            return False
        cursor = 0 if row[1] is None else decode_value(row[1], row[2])
        return int(cursor or 0) < int(row[0])

    def check_store(self, store_id: str) -> None:
        """A store whose cells are consistent with its head, or PgStoreError (the counterpart
        of :meth:`RelayStore.check_file`; PostgreSQL checks its own pages)."""
        with self.transaction(snapshot=True) as conn:
            row = conn.execute(
                f"SELECT head, (SELECT max(version) FROM {_S}.cells c WHERE c.store_id = "
                f"s.store_id) FROM {_S}.stores s WHERE store_id = %s",
                (store_id,),
            ).fetchone()
        if row is None:
            raise PgStoreError(f"no store {store_id!r} in the database")
        if row[1] is not None and row[1] > row[0]:
            raise PgStoreError(f"store {store_id!r} holds version {row[1]} above its head {row[0]}")

    # ------------------------------------------------------------ SQLite store files

    def export_store(self, store_id: str, dest: Path) -> tuple[int, str]:
        """Write a store into a new SQLite store file ``dest`` (absent or empty) that
        :class:`RelayStore` opens as the same store: epoch, head, cells with their versions,
        peer positions and site bindings, schema, reactor state. Read in one snapshot, so
        consistent while nodes write the store.

        Returns:
            The head captured and the file's integrity check result (``"ok"`` if sound).
        """
        if dest.exists() and dest.stat().st_size:
            raise PgStoreError(f"{dest} exists and is not empty")
        if not self.has_store(store_id):
            raise PgStoreError(f"no store {store_id!r} in the database")
        target = RelayStore(dest)
        try:
            head, check = self._export(store_id, target)
        except BaseException:
            target.close()
            for suffix in ("", "-wal", "-shm", "-journal"):  # no half-written store left
                Path(str(dest) + suffix).unlink(missing_ok=True)
            raise
        target.close()
        return head, check

    def _export(self, store_id: str, target: RelayStore) -> tuple[int, str]:
        sq = target.conn
        with self.transaction(snapshot=True) as conn:
            row = conn.execute(
                f"SELECT epoch, head, created FROM {_S}.stores WHERE store_id = %s",
                (store_id,),
            ).fetchone()
            if row is None:
                raise PgStoreError(f"no store {store_id!r} in the database")
            epoch, head, created = row
            sq.execute("BEGIN IMMEDIATE")
            try:
                meta: list[tuple[str, Any]] = [
                    ("epoch", epoch),
                    ("head", int(head)),
                    ("created", float(created)),
                ]
                for key, kind, data in conn.execute(
                    f"SELECT key, kind, data FROM {_S}.meta WHERE store_id = %s", (store_id,)
                ):
                    meta.append((key, decode_value(kind, data)))
                sq.executemany("INSERT OR REPLACE INTO relay_meta VALUES (?, ?)", meta)
                with conn.cursor(name="crsync_export") as cur:
                    cur.itersize = 1000
                    cur.execute(
                        f"SELECT {_CELL_COLS} FROM {_S}.cells WHERE store_id = %s",
                        (store_id,),
                    )
                    batch: list[tuple[Any, ...]] = []
                    for r in cur:
                        kind, data = r[3], r[4]
                        text = kind == 3
                        val = None if text else decode_value(kind, data)
                        batch.append(
                            (bytes(r[0]), bytes(r[1]), bytes(r[2]), text,
                             bytes(data) if text else None, val,
                             *r[5:10], None if r[10] is None else bytes(r[10]))
                        )  # fmt: skip
                        if len(batch) >= 1000:
                            self._export_cells(sq, batch)
                            batch = []
                    self._export_cells(sq, batch)

                def copy(insert: str, select: str, row: Callable[[tuple[Any, ...]], Any]) -> None:
                    """Rows of ``SELECT {select} WHERE store_id``, as ``row`` makes them."""
                    rows = conn.execute(f"SELECT {select} WHERE store_id = %s", (store_id,))
                    sq.executemany(insert, (row(r) for r in rows))

                def blob(v: Any) -> bytes | None:
                    return None if v is None else bytes(v)

                copy(
                    "INSERT INTO relay_peers (site_id, pushed_upto, received_upto, last_seen, "
                    "key_hash, departed) VALUES (?, ?, ?, ?, ?, ?)",
                    f"site_id, pushed_upto, received_upto, last_seen, key_hash, departed "
                    f"FROM {_S}.peers",
                    lambda r: (bytes(r[0]), r[1], r[2], r[3], blob(r[4]), int(bool(r[5]))),
                )
                copy(
                    "INSERT INTO relay_graves (tbl, pk, cl, version) "
                    "VALUES (CAST(? AS TEXT), ?, ?, ?)",
                    f"tbl, pk, cl, version FROM {_S}.graves",
                    lambda r: (bytes(r[0]), bytes(r[1]), r[2], r[3]),
                )
                copy(
                    "INSERT INTO relay_schema (tbl, pk, columns, not_null, intkey) "
                    "VALUES (CAST(? AS TEXT), ?, ?, ?, ?)",
                    f"tbl, pk, columns, not_null, intkey FROM {_S}.tables",
                    lambda r: (bytes(r[0]), r[1], r[2], r[3], None if r[4] is None else int(r[4])),
                )
                copy(
                    "INSERT INTO reactor_set_aside (base, upto, reason, at) VALUES (?, ?, ?, ?)",
                    f"base, upto, reason, at FROM {_S}.reactor_set_aside",
                    tuple,
                )
            except BaseException:
                sq.execute("ROLLBACK")
                raise
            sq.execute("COMMIT")
        check = sq.execute("PRAGMA integrity_check").fetchone()[0]
        return int(head), str(check)

    @staticmethod
    def _export_cells(sq: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        # Names and text values go in as their exact bytes (CAST keeps them bit for bit,
        # NULs and all), every other value as itself.
        sq.executemany(
            "INSERT INTO relay_cells (tbl, pk, cid, val, col_version, site_id, cl, seq, "
            "version, via) VALUES (CAST(?1 AS TEXT), ?2, CAST(?3 AS TEXT), "
            "iif(?4, CAST(?5 AS TEXT), ?6), ?7, ?8, ?9, ?10, ?11, ?12)",
            batch,
        )

    def import_store(
        self, store_id: str, src: Path, *, replace: bool = False, epoch: str | None = None
    ) -> str:
        """Load a SQLite store file (a relay's data directory or a backup) as store
        ``store_id``: cells with their relay versions, head, peer positions and site
        bindings, schema, reactor state, and the file's epoch unless ``epoch`` is given (a
        restore gives a new one; a migration keeps it, so devices resume where they were).

        One transaction: the store appears whole or not at all. ``replace``: an existing
        store of that id is replaced, else refused.

        Returns:
            The store's epoch.
        """
        check_store_id(store_id)
        RelayStore.check_file(src)
        sq = sqlite3.connect(src.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            with self.transaction() as conn:
                return self._import(conn, sq, store_id, replace, epoch)
        finally:
            sq.close()

    def _import(
        self,
        conn: psycopg.Connection[Any],
        sq: sqlite3.Connection,
        store_id: str,
        replace: bool,
        epoch: str | None,
    ) -> str:
        def columns(table: str) -> set[str]:
            return {r[1] for r in sq.execute(f"PRAGMA table_info({table})")}

        meta = dict(sq.execute("SELECT key, value FROM relay_meta").fetchall())
        # Advisory lock on the store id: two imports of one new id serialise.
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{_S}.store:{store_id}",))
        if self._lock_store(conn, store_id) is not None:
            if not replace:
                raise PgStoreError(f"store {store_id!r} exists in the database")
            for table in _PER_STORE_TABLES:
                conn.execute(f"DELETE FROM {_S}.{table} WHERE store_id = %s", (store_id,))
        head = int(meta.get("head", 0))
        new_epoch = epoch or str(meta.get("epoch") or uuid.uuid4().hex)
        created = float(meta.get("created") or time.time())
        total = 0
        top = 0
        cell_cols = columns("relay_cells")
        via = "via" if "via" in cell_cols else "NULL"
        with conn.cursor().copy(f"COPY {_S}.cells (store_id, {_CELL_COLS}) FROM STDIN") as copy:
            for r in sq.execute(
                "SELECT CAST(tbl AS BLOB), pk, CAST(cid AS BLOB), typeof(val), "
                "CAST(val AS BLOB), val, col_version, site_id, cl, seq, version, "
                f"{via} FROM relay_cells"
            ):
                tbl, pk, cid, typ = bytes(r[0]), bytes(r[1]), bytes(r[2]), r[3]
                data: bytes | None
                if typ == "text":
                    kind, data = 3, bytes(r[4])
                else:
                    kind, data = encode_value(r[5])
                total += _cell_bytes(tbl, pk, cid, data)
                top = max(top, int(r[10]))
                copy.write_row((store_id, tbl, pk, cid, kind, data, *r[6:12]))
        has_graves = sq.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'relay_graves'"
        ).fetchone()
        if has_graves:
            with conn.cursor().copy(
                f"COPY {_S}.graves (store_id, tbl, pk, cl, version) FROM STDIN"
            ) as copy:
                for r in sq.execute("SELECT CAST(tbl AS BLOB), pk, cl, version FROM relay_graves"):
                    tbl, pk = bytes(r[0]), bytes(r[1])
                    total += _grave_bytes(tbl, pk)
                    top = max(top, int(r[3]))
                    copy.write_row((store_id, tbl, pk, r[2], r[3]))
        if top > head:
            raise PgStoreError(f"the store file holds version {top} above its head {head}")
        conn.execute(
            f"INSERT INTO {_S}.stores (store_id, epoch, head, created, cell_bytes) "
            "VALUES (%s, %s, %s, %s, %s)",
            (store_id, new_epoch, head, created, total),
        )
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {_S}.meta (store_id, key, kind, data) VALUES (%s, %s, %s, %s)",
                [
                    (store_id, k, *encode_value(v))
                    for k, v in meta.items()
                    if k not in _STORE_ROW_KEYS
                ],
            )
            peer_cols = columns("relay_peers")
            key_hash = "key_hash" if "key_hash" in peer_cols else "NULL"
            departed = "departed" if "departed" in peer_cols else "0"
            cur.executemany(
                f"INSERT INTO {_S}.peers (store_id, site_id, pushed_upto, received_upto, "
                "last_seen, key_hash, departed) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [
                    (store_id, *r[:5], bool(r[5]))
                    for r in sq.execute(
                        "SELECT site_id, pushed_upto, received_upto, last_seen, "
                        f"{key_hash}, {departed} FROM relay_peers"
                    )
                ],
            )
            schema_cols = columns("relay_schema")
            not_null = "not_null" if "not_null" in schema_cols else "NULL"
            intkey = "intkey" if "intkey" in schema_cols else "NULL"
            cur.executemany(
                f"INSERT INTO {_S}.tables (store_id, tbl, pk, columns, not_null, intkey) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                [
                    (store_id, bytes(r[0]), r[1], r[2], r[3], None if r[4] is None else bool(r[4]))
                    for r in sq.execute(
                        f"SELECT CAST(tbl AS BLOB), pk, columns, {not_null}, {intkey} "
                        "FROM relay_schema"
                    )
                ],
            )
            has_set_aside = sq.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'reactor_set_aside'"
            ).fetchone()
            if has_set_aside:
                cur.executemany(
                    f"INSERT INTO {_S}.reactor_set_aside (store_id, base, upto, reason, at) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    [
                        (store_id, *r)
                        for r in sq.execute("SELECT base, upto, reason, at FROM reactor_set_aside")
                    ],
                )
        return new_epoch


def migrate_data_dir(
    data_dir: Path, db: PgDatabase, *, replace: bool = False
) -> list[tuple[str, str, int]]:
    """Move every store of a relay's data directory into the database (the core of
    ``crsync-relay migrate-stores``): each store keeps its epoch, relay versions and peer
    positions, so devices resume from their cursors without a full re-push; the directory's
    store index (who created each store) comes along. The directory is left as it was.

    Holds the directory's lock: refused while a relay serves it. Every store id is checked
    first: if one exists in the database already (and not ``replace``), nothing is imported.
    Each store is imported in its own transaction.

    Returns:
        ``(store id, epoch, head)`` of each store moved, by id.
    """
    from .datadir import STORE_INDEX, DataDir

    layout = DataDir(data_dir)
    if not data_dir.is_dir():
        raise PgStoreError(f"no relay data directory at {data_dir}")
    with layout.exclusive(f"a relay is serving {data_dir}; stop it before migrating its stores"):
        stores = layout.stores()
        if not replace:
            there = [sid for sid, _ in stores if db.has_store(sid)]
            if there:
                raise PgStoreError(
                    f"{len(there)} of the stores exist in the database already "
                    f"({', '.join(there[:5])}); nothing was migrated"
                )
        moved = []
        for sid, path in stores:
            epoch = db.import_store(sid, path, replace=replace)
            moved.append((sid, epoch, db.open_store(sid, create=False).head))
        index = data_dir / STORE_INDEX
        if index.exists():
            conn = sqlite3.connect(index.resolve().as_uri() + "?mode=ro", uri=True)
            try:
                rows = conn.execute("SELECT store, creator, created_at FROM stores").fetchall()
            finally:
                conn.close()
            with db.transaction() as pg, pg.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {_S}.store_creators (store_id, creator, created_at) "
                    "VALUES (%s, %s, %s) ON CONFLICT (store_id) DO NOTHING",
                    rows,
                )
    return moved


class HeadListener:
    """A dedicated connection (not pooled) listening on :data:`HEADS_CHANNEL`: the heads
    other merges reach, ``(store id, head)``, in commit order. Blocking; one thread."""

    def __init__(self, db: PgDatabase) -> None:
        self.conn = db._psycopg.connect(
            db.pool.conninfo, autocommit=True, connect_timeout=5, application_name=NODE_APP_NAME
        )
        try:
            self.conn.execute(f"LISTEN {HEADS_CHANNEL}")
        except BaseException:
            self.conn.close()
            raise

    def heads(self, timeout: float) -> Iterator[tuple[str, int]]:
        """Notifications received within ``timeout`` seconds (malformed payloads skipped)."""
        for n in self.conn.notifies(timeout=timeout):
            try:
                yield parse_head_notification(n.payload)
            except ValueError:
                continue

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> HeadListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LeaseConnection:
    """A dedicated connection (not pooled) holding session-level advisory locks: what a
    relay node holds is released when the node (or the connection) dies."""

    def __init__(self, db: PgDatabase) -> None:
        self.conn = db._psycopg.connect(db.pool.conninfo, autocommit=True, connect_timeout=5)

    @property
    def closed(self) -> bool:
        return bool(self.conn.closed)

    def try_lock(self, key: str) -> bool:
        """Take the lock named ``key`` if it is free (or held here already)."""
        row = self.conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        return bool(row and row[0])

    def alive(self) -> bool:
        """True if the connection answers (raises if it is broken)."""
        row = self.conn.execute("SELECT 1").fetchone()
        return bool(row and row[0] == 1)

    def close(self) -> None:
        self.conn.close()


class PgStoreIndex:
    """Who created each store, in the database (the counterpart of
    :class:`crsync_relay.datadir.StoreIndex`, shared by every node): caps the stores one
    token subject may create."""

    def __init__(self, db: PgDatabase) -> None:
        self.db = db

    def created_by(self, subject: str) -> int:
        """How many stores ``subject`` created."""
        with self.db.pool.connection() as conn:
            row = conn.execute(
                f"SELECT count(*) FROM {_S}.store_creators WHERE creator = %s", (subject,)
            ).fetchone()
        return int(row[0]) if row else 0

    def add(self, store: str, subject: str) -> None:
        """Record that ``subject`` created ``store`` (the first record stays)."""
        with self.db.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {_S}.store_creators (store_id, creator, created_at) "
                "VALUES (%s, %s, %s) ON CONFLICT (store_id) DO NOTHING",
                (store, subject, time.time()),
            )

    def close(self) -> None:
        """Nothing to release: connections belong to the database's pool."""


# ---------------------------------------------------------------------------- one store

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reconnecting(
    method: Callable[Concatenate[PgRelayStore, _P], _R],
) -> Callable[Concatenate[PgRelayStore, _P], _R]:
    """Run an idempotent store call again, once, if it failed because its pooled connection
    was lost (a PostgreSQL restart, a dropped TCP connection): the pool's idle connections
    are checked first, so the retry gets a live one. Any other error propagates as is."""

    def call(self: PgRelayStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if not self.db.lost_connection(exc):
                raise
            self.db.pool.check()
            return method(self, *args, **kwargs)

    functools.update_wrapper(call, method)
    return call


class PgRelayStore(StoreBackend):
    """One store in a :class:`PgDatabase` (the interface of
    :class:`crsync_relay.store_api.StoreBackend`). Instances are cheap: each call borrows a
    pooled connection; any number of instances (on any number of nodes) may serve a store."""

    def __init__(
        self,
        db: PgDatabase,
        store_id: str,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.time,
        default_max_offline: float = rules.DEFAULT_MAX_OFFLINE,
    ) -> None:
        """Open (or, with ``create``, create with a fresh epoch) the store ``store_id``.

        ``clock``: the time every ``last_seen`` and :meth:`collect` use (tests inject a fake
        one); ``default_max_offline``: the store's ``max_offline`` unless set for it."""
        self.db = db
        self.clock = clock
        self.default_max_offline = default_max_offline
        self.store_id = check_store_id(store_id)
        self._schema: dict[str, TableSchema] | None = None
        self._unconstrained: set[str] = set()
        self._schema_gen = -1
        self._relay_site: bytes | None = None
        self._cache_lock = threading.Lock()  # the schema cache, if one instance serves threads
        with db.pool.connection() as conn:
            if create:
                conn.execute(
                    f"INSERT INTO {_S}.stores (store_id, epoch, created) VALUES (%s, %s, %s) "
                    "ON CONFLICT (store_id) DO NOTHING",
                    (store_id, uuid.uuid4().hex, clock()),
                )
            row = conn.execute(
                f"SELECT epoch FROM {_S}.stores WHERE store_id = %s", (store_id,)
            ).fetchone()
        if row is None:
            raise PgStoreError(f"no store {store_id!r} in the database")
        self.epoch: str = str(row[0])

    def close(self) -> None:
        """Nothing to release: connections belong to the database's pool."""

    def _tx(self, *, snapshot: bool = False) -> contextlib.AbstractContextManager[Any]:
        return self.db.transaction(snapshot=snapshot)

    def _one(self, sql: str, params: Sequence[Any] | Mapping[str, Any]) -> tuple[Any, ...] | None:
        with self.db.pool.connection() as conn:
            row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
        return row

    def _store_row(self, conn: psycopg.Connection[Any], cols: str) -> tuple[Any, ...]:
        """``cols`` of the store's row in ``stores``; the store must still exist."""
        row = conn.execute(
            f"SELECT {cols} FROM {_S}.stores WHERE store_id = %s", (self.store_id,)
        ).fetchone()
        if row is None:
            raise PgStoreError(f"store {self.store_id!r} was removed from the database")
        return tuple(row)

    def _lock_row(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """Lock the store's row until the transaction ends: ``(head, schema_gen)``."""
        row = PgDatabase._lock_store(conn, self.store_id)
        if row is None:
            raise PgStoreError(f"store {self.store_id!r} was removed from the database")
        return int(row[0]), int(row[1])

    @property
    @_reconnecting
    def head(self) -> int:
        """The latest relay version."""
        row = self._one(f"SELECT head FROM {_S}.stores WHERE store_id = %s", (self.store_id,))
        if row is None:
            raise PgStoreError(f"store {self.store_id!r} was removed from the database")
        return int(row[0])

    def _meta(self, conn: psycopg.Connection[Any], key: str) -> SqlValue:
        row = conn.execute(
            f"SELECT kind, data FROM {_S}.meta WHERE store_id = %s AND key = %s",
            (self.store_id, key),
        ).fetchone()
        return None if row is None else decode_value(row[0], row[1])

    def _set_meta(self, conn: psycopg.Connection[Any], items: Mapping[str, Any]) -> None:
        bad = set(items) & _STORE_ROW_KEYS
        if bad:
            raise PgStoreError(f"meta keys {sorted(bad)} are not settable this way")
        with conn.cursor() as cur:
            cur.executemany(
                f"INSERT INTO {_S}.meta (store_id, key, kind, data) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (store_id, key) DO UPDATE SET kind = excluded.kind, "
                "data = excluded.data",
                [(self.store_id, k, *encode_value(v)) for k, v in items.items()],
            )

    # ------------------------------------------------------------------ schema

    def _schema_for(self, conn: psycopg.Connection[Any], gen: int) -> dict[str, TableSchema]:
        """The schema as of generation ``gen`` (the cached copy unless it is older)."""
        with self._cache_lock:
            if self._schema is not None and self._schema_gen == gen:
                return self._schema
        rows = conn.execute(
            f"SELECT tbl, pk, columns, not_null, intkey FROM {_S}.tables WHERE store_id = %s",
            (self.store_id,),
        ).fetchall()
        schema, unconstrained = _schema_from_rows(rows)
        with self._cache_lock:
            self._schema, self._unconstrained, self._schema_gen = schema, unconstrained, gen
        return schema

    @_reconnecting
    def schema(self) -> dict[str, TableSchema]:
        """The union of the replicated schemas peers announced (cached per schema generation:
        one small query tells whether another node changed it)."""
        with self.db.pool.connection() as conn:
            row = self._store_row(conn, "schema_gen")
            return dict(self._schema_for(conn, int(row[0])))

    @_reconnecting
    def check_schema(self, schema: dict[str, TableSchema]) -> str | None:
        """Compare a peer's replicated schema with the store's; record additive differences
        (see :meth:`RelayStore.check_schema`). Writes only when the peer announces something
        new, then under the store's lock, recomputed from the committed schema (nodes that
        record announcements at once never lose one another's columns)."""
        known = self.schema()
        problem, new = rules.plan_schema(known, set(self._unconstrained), schema)
        if problem is not None or not new:
            return problem
        with self._tx() as conn:
            _head, gen = self._lock_row(conn)
            known = dict(self._schema_for(conn, gen))
            problem, new = rules.plan_schema(known, set(self._unconstrained), schema)
            if problem is not None or not new:
                return problem
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO {_S}.tables (store_id, tbl, pk, columns, not_null, intkey) "
                    "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (store_id, tbl) DO UPDATE SET "
                    "pk = excluded.pk, columns = excluded.columns, "
                    "not_null = excluded.not_null, intkey = excluded.intkey",
                    [_schema_row(self.store_id, t, s) for t, s in new.items()],
                )
            conn.execute(
                f"UPDATE {_S}.stores SET schema_gen = schema_gen + 1 WHERE store_id = %s",
                (self.store_id,),
            )
        return None

    def forget_table(self, table: str) -> int:
        """Remove a table's announced schema and every cell of it, and give the store a new
        epoch (see :meth:`RelayStore.forget_table`). A table the store does not have is
        refused and changes nothing.

        Returns:
            How many cells were removed.
        """
        with self._tx() as conn:
            self._lock_row(conn)
            n, size = self._delete_cells(conn, "tbl = %s", (table.encode(),))
            ng, gsize = self._delete_graves(conn, "tbl = %s", (table.encode(),))
            n, size = n + ng, size + gsize
            gone = conn.execute(
                f"DELETE FROM {_S}.tables WHERE store_id = %s AND tbl = %s",
                (self.store_id, table.encode()),
            ).rowcount
            if not gone and not n:
                raise CrsyncError(f"store has no table {quote(table)}")
            epoch = uuid.uuid4().hex
            conn.execute(
                f"UPDATE {_S}.stores SET epoch = %s, schema_gen = schema_gen + 1, "
                "cell_bytes = cell_bytes - %s WHERE store_id = %s",
                (epoch, size, self.store_id),
            )
        self.epoch = epoch
        return n

    def _delete_cells(
        self, conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...]
    ) -> tuple[int, int]:
        row = conn.execute(
            f"WITH d AS (DELETE FROM {_S}.cells WHERE store_id = %s AND {where} RETURNING "
            f"{CELL_OVERHEAD} + octet_length(tbl) + octet_length(pk) + octet_length(cid) + "
            "coalesce(octet_length(data), 0) AS size) SELECT count(*), coalesce(sum(size), 0) "
            "FROM d",
            (self.store_id, *params),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def _delete_graves(
        self, conn: psycopg.Connection[Any], where: str, params: tuple[Any, ...]
    ) -> tuple[int, int]:
        row = conn.execute(
            f"WITH d AS (DELETE FROM {_S}.graves WHERE store_id = %s AND {where} RETURNING "
            f"{_GRAVE_BYTES_SQL} AS size) SELECT count(*), coalesce(sum(size), 0) FROM d",
            (self.store_id, *params),
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def remove_cells(self, table: str, pk: bytes, cid: str | None) -> int:
        """Remove one cell (``cid``) or a whole row (``cid`` None): an operator's repair.

        Returns:
            How many cells were removed.
        """
        with self._tx() as conn:
            self._lock_row(conn)
            if cid is None:
                n, size = self._delete_cells(conn, "tbl = %s AND pk = %s", (table.encode(), pk))
            else:
                n, size = self._delete_cells(
                    conn, "tbl = %s AND pk = %s AND cid = %s", (table.encode(), pk, cid.encode())
                )
            if cid is None or cid == "-1":  # a collected tombstone is the row's "-1" cell
                ng, gsize = self._delete_graves(conn, "tbl = %s AND pk = %s", (table.encode(), pk))
                n, size = n + ng, size + gsize
            conn.execute(
                f"UPDATE {_S}.stores SET cell_bytes = cell_bytes - %s WHERE store_id = %s",
                (size, self.store_id),
            )
        return n

    # ------------------------------------------------------------------ peers

    @_reconnecting
    def peer(self, site_id: bytes) -> PeerPosition:
        """Recorded positions of a peer (zeros if never seen)."""
        row = self._one(
            f"SELECT pushed_upto, received_upto, last_seen FROM {_S}.peers "
            "WHERE store_id = %s AND site_id = %s",
            (self.store_id, site_id),
        )
        if row is None:
            return PeerPosition(site_id, 0, 0, None)
        return PeerPosition(site_id, int(row[0]), int(row[1]), row[2])

    @_reconnecting
    def seen(self, site_id: bytes) -> None:
        """A device connected now: record it as seen (re-admitted if it had departed); no
        write when it was seen within the last minute."""
        now = self.clock()
        with self.db.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {_S}.peers (store_id, site_id, last_seen) VALUES (%s, %s, %s) "
                "ON CONFLICT (store_id, site_id) DO UPDATE SET last_seen = excluded.last_seen, "
                "departed = false WHERE peers.departed OR peers.last_seen IS NULL "
                "OR peers.last_seen < %s",
                (self.store_id, site_id, now, now - 60),
            )

    @staticmethod
    def _devices(conn: psycopg.Connection[Any], store_id: str) -> list[DeviceInfo]:
        return [
            DeviceInfo(bytes(site), int(pushed), int(received), seen, bool(departed))
            for site, pushed, received, seen, departed in conn.execute(
                f"SELECT site_id, pushed_upto, received_upto, last_seen, departed "
                f"FROM {_S}.peers WHERE store_id = %s ORDER BY site_id",
                (store_id,),
            )
        ]

    @_reconnecting
    def devices(self) -> list[DeviceInfo]:
        """Every device the store recorded (its reactor's site included), by site id."""
        with self.db.pool.connection() as conn:
            return self._devices(conn, self.store_id)

    # ------------------------------------------------------------- the horizon

    @_reconnecting
    def horizon(self) -> int:
        """The store's horizon (0 until the first :meth:`collect`)."""
        with self.db.pool.connection() as conn:
            h = self._meta(conn, "horizon")
        return 0 if h is None else int(h)

    @_reconnecting
    def max_offline(self) -> float:
        """Seconds a device may stay away before the horizon passes it."""
        with self.db.pool.connection() as conn:
            v = self._meta(conn, "max_offline")
        return self.default_max_offline if v is None else float(v)

    @_reconnecting
    def set_max_offline(self, seconds: float) -> None:
        """Set this store's ``max_offline`` (an operator's setting, kept in the store)."""
        rules.check_max_offline(seconds)
        with self._tx() as conn:
            self._lock_row(conn)
            self._set_meta(conn, {"max_offline": float(seconds)})

    @_reconnecting
    def collect(self, connected: Collection[bytes] = ()) -> Collected:
        """Move the horizon and collect below it, in one transaction under the store's row
        lock (see :meth:`RelayStore.collect`): merges of other nodes wait, so no version is
        written meanwhile below the new horizon."""
        with self._tx() as conn:
            head, _gen = self._lock_row(conn)
            now = self.clock()
            v = self._meta(conn, "max_offline")
            window = self.default_max_offline if v is None else float(v)
            devices = self._devices(conn, self.store_id)
            site = self._meta(conn, "relay_site")
            exclude = None if site is None else bytes(site)  # type: ignore[arg-type]
            h = self._meta(conn, "horizon")
            stored = 0 if h is None else int(h)
            gone = [x for x in rules.departing(devices, now, window) if x not in connected]
            horizon = rules.compute_horizon(
                devices, head, stored, now, window, exclude=exclude, connected=connected
            )
            moved = 0
            if horizon > stored:
                # Tombstones up to the stored horizon were collected when it was set.
                span = "version > %s AND version <= %s"
                row = conn.execute(
                    f"WITH g AS (INSERT INTO {_S}.graves (store_id, tbl, pk, cl, version) "
                    f"SELECT store_id, tbl, pk, cl, version FROM {_S}.cells WHERE "
                    f"store_id = %s AND {span} AND {_TOMBSTONE} ON CONFLICT "
                    "(store_id, tbl, pk) DO UPDATE SET cl = excluded.cl, "
                    f"version = excluded.version RETURNING {_GRAVE_BYTES_SQL} AS size) "
                    "SELECT count(*), coalesce(sum(size), 0) FROM g",
                    (self.store_id, stored, horizon),
                ).fetchone()
                assert row is not None
                moved, added = int(row[0]), int(row[1])
                if moved:
                    _n, freed = self._delete_cells(
                        conn,
                        f"(tbl, pk) IN (SELECT tbl, pk FROM {_S}.cells WHERE store_id = %s "
                        f"AND {span} AND {_TOMBSTONE})",
                        (self.store_id, stored, horizon),
                    )
                    conn.execute(
                        f"UPDATE {_S}.stores SET cell_bytes = cell_bytes + %s WHERE store_id = %s",
                        (added - freed, self.store_id),
                    )
            if gone:
                conn.execute(
                    f"UPDATE {_S}.peers SET pushed_upto = 0, received_upto = 0, departed = true "
                    "WHERE store_id = %s AND site_id = ANY(%s)",
                    (self.store_id, gone),
                )
            if horizon != stored or h is None:
                self._set_meta(conn, {"horizon": horizon})
        return Collected(horizon, moved, len(gone))

    @_reconnecting
    def gc_stats(self) -> GcStats:
        """Tombstones, graves, the horizon and its age, the devices (see :class:`GcStats`)."""
        with self._tx(snapshot=True) as conn:
            head = int(self._store_row(conn, "head")[0])
            row = conn.execute(
                f"SELECT (SELECT count(*) FROM {_S}.cells WHERE store_id = %(s)s AND "
                f"{_TOMBSTONE}), (SELECT count(*) FROM {_S}.graves WHERE store_id = %(s)s)",
                {"s": self.store_id},
            ).fetchone()
            assert row is not None
            devices = self._devices(conn, self.store_id)
            h = self._meta(conn, "horizon")
            v = self._meta(conn, "max_offline")
            site = self._meta(conn, "relay_site")
        horizon = 0 if h is None else int(h)
        window = self.default_max_offline if v is None else float(v)
        exclude = None if site is None else bytes(site)  # type: ignore[arg-type]
        age, soon = rules.gc_figures(devices, head, horizon, self.clock(), window, exclude)
        shown = [d for d in devices if d.site_id != exclude]
        return GcStats(int(row[0]), int(row[1]), horizon, age, shown, soon, window)

    @_reconnecting
    def next_version(self, cursor: int) -> int | None:
        """The first relay version after ``cursor`` holding anything (None: none)."""
        row = self._one(
            f"SELECT least((SELECT min(version) FROM {_S}.cells WHERE store_id = %(s)s AND "
            f"version > %(c)s), (SELECT min(version) FROM {_S}.graves WHERE store_id = %(s)s "
            "AND version > %(c)s))",
            {"s": self.store_id, "c": cursor},
        )
        return None if row is None or row[0] is None else int(row[0])

    @_reconnecting
    def remaining(self, cursor: int, after: tuple[int, str, bytes, str] | None = None) -> int:
        """How many cells and graves a peer at ``cursor`` has yet to receive."""
        with self._tx(snapshot=True) as conn:
            row = conn.execute(
                f"SELECT (SELECT count(*) FROM {_S}.cells WHERE store_id = %(s)s AND "
                f"version > %(c)s) + (SELECT count(*) FROM {_S}.graves WHERE store_id = %(s)s "
                "AND version > %(c)s)",
                {"s": self.store_id, "c": cursor},
            ).fetchone()
            n = int(row[0]) if row else 0
            if after is not None:
                k = {
                    "s": self.store_id,
                    "v": after[0],
                    "t": after[1].encode(),
                    "p": after[2],
                    "c": after[3].encode(),
                }
                row = conn.execute(
                    f"SELECT (SELECT count(*) FROM {_S}.cells WHERE store_id = %(s)s AND "
                    "version = %(v)s AND (tbl, pk, cid) <= (%(t)s, %(p)s, %(c)s)) + "
                    f"(SELECT count(*) FROM {_S}.graves WHERE store_id = %(s)s AND "
                    f"version = %(v)s AND (tbl, pk, {_SENTINEL_SQL}) <= (%(t)s, %(p)s, %(c)s))",
                    k,
                ).fetchone()
                n -= int(row[0]) if row else 0
        return max(0, n)

    @_reconnecting
    def _key_hash(self, site_id: bytes) -> bytes | None:
        sql = f"SELECT key_hash FROM {_S}.peers WHERE store_id = %s AND site_id = %s"
        row = self._one(sql, (self.store_id, site_id))
        return None if row is None or row[0] is None else bytes(row[0])

    @_reconnecting
    def _bind_key(self, site_id: bytes, digest: bytes) -> bytes:
        with self.db.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {_S}.peers (store_id, site_id, key_hash) VALUES (%s, %s, %s) "
                "ON CONFLICT (store_id, site_id) DO UPDATE SET key_hash = excluded.key_hash "
                "WHERE peers.key_hash IS NULL",
                (self.store_id, site_id, digest),
            )
            row = conn.execute(
                f"SELECT key_hash FROM {_S}.peers WHERE store_id = %s AND site_id = %s",
                (self.store_id, site_id),
            ).fetchone()
        assert row is not None
        return bytes(row[0])

    @_reconnecting
    def record_received(self, site_id: bytes, upto: int) -> None:
        """Record that a peer merged everything up to relay version ``upto`` (one statement;
        no write when that is not news)."""
        with self.db.pool.connection() as conn:
            conn.execute(
                f"INSERT INTO {_S}.peers (store_id, site_id, received_upto, last_seen) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (store_id, site_id) DO UPDATE SET "
                "received_upto = excluded.received_upto, last_seen = excluded.last_seen, "
                "departed = false WHERE peers.received_upto < excluded.received_upto",
                (self.store_id, site_id, upto, self.clock()),
            )

    # ------------------------------------------------------------------ reactor

    @_reconnecting
    def relay_site(self) -> bytes | None:
        """The site id this store's reactor writes under (None until a reactor ran)."""
        if self._relay_site is None:
            with self.db.pool.connection() as conn:
                site = self._meta(conn, "relay_site")
            self._relay_site = None if site is None else bytes(site)  # type: ignore[arg-type]
        return self._relay_site

    @_reconnecting
    def reactor_state(self) -> tuple[bytes, int]:
        """The reactor's site id (minted on first use) and the relay version it handled up to
        (0 if it never ran)."""
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO {_S}.meta (store_id, key, kind, data) VALUES (%s, 'relay_site', "
                "4, %s) ON CONFLICT (store_id, key) DO NOTHING",
                (self.store_id, uuid.uuid4().bytes),
            )
            site = self._meta(conn, "relay_site")
            cursor = self._meta(conn, "reactor_cursor")
        assert isinstance(site, bytes)
        return site, 0 if cursor is None else int(cursor)

    @_reconnecting
    def save_reactor_cursor(self, cursor: int) -> None:
        """Record that the store's reactor handled every relay version up to ``cursor``."""
        with self._tx() as conn:
            self._set_meta(conn, {"reactor_cursor": cursor})

    @_reconnecting
    def set_aside_reactor_batch(self, base: int, upto: int, reason: str) -> None:
        """Skip relay versions ``(base, upto]`` for the reactor: record them with the reason
        and move the reactor's cursor past them, in one transaction."""
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO {_S}.reactor_set_aside (store_id, base, upto, reason, at) "
                "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (store_id, base) DO UPDATE SET "
                "upto = excluded.upto, reason = excluded.reason, at = excluded.at",
                (self.store_id, base, upto, reason[:2000].replace("\x00", "\\0"), self.clock()),
            )
            self._set_meta(conn, {"reactor_cursor": upto})

    @_reconnecting
    def set_aside_batches(self) -> list[tuple[int, int, str, float]]:
        """The reactor batches set aside: ``(base, upto, reason, at)`` each, by base."""
        with self.db.pool.connection() as conn:
            return [
                (int(b), int(u), str(r), float(a))
                for b, u, r, a in conn.execute(
                    f"SELECT base, upto, reason, at FROM {_S}.reactor_set_aside "
                    "WHERE store_id = %s ORDER BY base",
                    (self.store_id,),
                )
            ]

    @_reconnecting
    def row_cells(self, table: str, pk: bytes) -> list[tuple[str, SqlValue, int, int]]:
        """The cells the store holds for one row: ``(cid, value, col_version, cl)`` each
        (the sentinel included; a collected tombstone as ``("-1", None, cl, cl)``), none if
        the row was never written."""
        with self.db.pool.connection() as conn:
            return [
                (bytes(cid).decode(), decode_value(kind, data), int(cv), int(cl))
                for cid, kind, data, cv, cl in conn.execute(
                    f"SELECT cid, kind, data, col_version, cl FROM {_S}.cells "
                    "WHERE store_id = %(s)s AND tbl = %(t)s AND pk = %(p)s UNION ALL "
                    f"SELECT {_SENTINEL_SQL}, 0::smallint, NULL::bytea, cl, cl FROM {_S}.graves "
                    "WHERE store_id = %(s)s AND tbl = %(t)s AND pk = %(p)s",
                    {"s": self.store_id, "t": table.encode(), "p": pk},
                )
            ]

    # ------------------------------------------------------------------ merge

    @_reconnecting
    def _merge(self, push: Push) -> tuple[int, int]:
        """Committed in PostgreSQL when it returns; the store's row lock is held from the
        version's allocation to the commit (see the module docstring)."""
        site_id, changes = push.site_id, push.changes
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT s.head, s.schema_gen, m.data FROM {_S}.stores s LEFT JOIN {_S}.meta m "
                "ON m.store_id = s.store_id AND m.key = 'relay_site' WHERE s.store_id = %s "
                "FOR UPDATE OF s",
                (self.store_id,),
            ).fetchone()
            if row is None:
                raise PgStoreError(f"store {self.store_id!r} was removed from the database")
            head, gen = int(row[0]), int(row[1])
            reserved = None if row[2] is None or not push.announced_only else bytes(row[2])
            changes = rules.drop_reserved(changes, reserved, site_id)
            groups = rules.check_unit(changes, self._schema_for(conn, gen), push.announced_only)
            version = head + 1
            states, via_of, old_bytes, graves = self._load_many(conn, list(groups))
            merged = rules.merge_groups(groups, states, via_of, version, site_id)
            dead: dict[bytes, list[bytes]] = {}
            for table, pk in merged.rewritten:
                dead.setdefault(table.encode(), []).append(pk)
            freed = sum(old_bytes[key] for key in merged.rewritten)
            added = 0
            rows_out: list[tuple[Any, ...]] = []
            for table, pk, cid, val, *clocks, via in merged.cells:
                tbl, cid_b = table.encode(), cid.encode()
                kind, data = encode_value(val)
                added += _cell_bytes(tbl, pk, cid_b, data)
                rows_out.append((self.store_id, tbl, pk, cid_b, kind, data, *clocks, via))
            if merged.cells or merged.rewritten:
                for tbl, pks in dead.items():
                    conn.execute(
                        f"DELETE FROM {_S}.cells WHERE store_id = %s AND tbl = %s AND pk = ANY(%s)",
                        (self.store_id, tbl, pks),
                    )
                buried: dict[bytes, list[bytes]] = {}
                for table, pk in merged.rewritten:
                    if (table, pk) in graves:  # the row won over its collected tombstone
                        buried.setdefault(table.encode(), []).append(pk)
                for tbl, pks in buried.items():
                    conn.execute(
                        f"DELETE FROM {_S}.graves WHERE store_id = %s AND tbl = %s "
                        "AND pk = ANY(%s)",
                        (self.store_id, tbl, pks),
                    )
                with conn.cursor().copy(
                    f"COPY {_S}.cells (store_id, {_CELL_COLS}) FROM STDIN"
                ) as copy:
                    for r in rows_out:
                        copy.write_row(r)
                update = (
                    f"UPDATE {_S}.stores SET head = %s, cell_bytes = cell_bytes + %s "
                    "WHERE store_id = %s"
                )
                if self.db.notify_channel is None:
                    conn.execute(update, (version, added - freed, self.store_id))
                else:  # the same round trip; PostgreSQL delivers it at COMMIT, in commit order
                    conn.execute(
                        f"WITH u AS ({update} RETURNING head) "
                        "SELECT pg_notify(%s, %s || ' ' || head) FROM u",
                        (version, added - freed, self.store_id, self.db.notify_channel,
                         self.store_id),
                    )  # fmt: skip
                head = version
            conn.execute(
                f"INSERT INTO {_S}.peers (store_id, site_id, pushed_upto, last_seen) "
                "VALUES (%s, %s, %s, %s) ON CONFLICT (store_id, site_id) DO UPDATE SET "
                "pushed_upto = greatest(peers.pushed_upto, excluded.pushed_upto), "
                "last_seen = excluded.last_seen, departed = false",
                (self.store_id, site_id, push.upto, self.clock()),
            )
            if push.meta:
                self._set_meta(conn, push.meta)
        return head, merged.wins

    def _load_many(
        self, conn: psycopg.Connection[Any], keys: list[tuple[str, bytes]]
    ) -> tuple[
        dict[tuple[str, bytes], RowState],
        dict[tuple[str, bytes, str], bytes | None],
        dict[tuple[str, bytes], int],
        set[tuple[str, bytes]],
    ]:
        """Current state of many rows (one query per table), the pushing site of each of their
        cells, the bytes each row's cells (or collected tombstone) count, and which rows are
        collected tombstones (their state: :func:`store_rules.grave_state`)."""
        via_of: dict[tuple[str, bytes, str], bytes | None] = {}
        by_table: dict[str, list[bytes]] = {}
        for table, pk in keys:
            by_table.setdefault(table, []).append(pk)
        rows_of: dict[tuple[str, bytes], list[tuple[Any, ...]]] = {}
        size_of: dict[tuple[str, bytes], int] = {}
        graves: dict[tuple[str, bytes], int] = {}
        for table, pks in by_table.items():
            tbl = table.encode()
            for pk_m, cid_b, kind, data, cv, site, cl, seq, version, via in conn.execute(
                "SELECT pk, cid, kind, data, col_version, site_id, cl, seq, version, via "
                f"FROM {_S}.cells WHERE store_id = %s AND tbl = %s AND pk = ANY(%s)",
                (self.store_id, tbl, pks),
            ):
                pk, cid_raw = bytes(pk_m), bytes(cid_b)
                cid = cid_raw.decode()
                key = (table, pk)
                rows_of.setdefault(key, []).append(
                    (cid, decode_value(kind, data), cv, bytes(site), cl, seq, version)
                )
                via_of[(table, pk, cid)] = None if via is None else bytes(via)
                size_of[key] = size_of.get(key, 0) + _cell_bytes(
                    tbl, pk, cid_raw, None if data is None else bytes(data)
                )
            for pk_m, cl in conn.execute(
                f"SELECT pk, cl FROM {_S}.graves WHERE store_id = %s AND tbl = %s AND pk = ANY(%s)",
                (self.store_id, tbl, pks),
            ):
                pk = bytes(pk_m)
                graves[(table, pk)] = int(cl)
                size_of[(table, pk)] = size_of.get((table, pk), 0) + _grave_bytes(tbl, pk)
        states = {key: rules.row_state(rows) for key, rows in rows_of.items()}
        for key, cl in graves.items():
            states.setdefault(key, rules.grave_state(cl))
        return states, via_of, size_of, set(graves)

    # ------------------------------------------------------------------ reads

    @_reconnecting
    def _read(self, request: PageRequest) -> Page:
        """One REPEATABLE READ snapshot: the head and the cells read are consistent; rows are
        streamed through a server-side cursor, never all loaded."""
        cursor, max_cells = request.cursor, request.max_cells
        with self._tx(snapshot=True) as conn:
            head = int(self._store_row(conn, "head")[0])
            if request.after is not None:
                return self._version_part(conn, request, request.after, head)
            if cursor >= head:
                return Page([], head, True, None)
            with conn.cursor(name="crsync_page") as cur:
                cur.itersize = min(max_cells + 1, 500)
                cur.execute(
                    f"SELECT {_READ_COLS} FROM {_S}.cells WHERE store_id = %(s)s "
                    "AND version > %(c)s AND version <= %(h)s UNION ALL "
                    f"SELECT {_GRAVE_READ_COLS} FROM {_S}.graves WHERE store_id = %(s)s "
                    "AND version > %(c)s AND version <= %(h)s ORDER BY 13, 10, 1, 2, 3",
                    {"s": self.store_id, "c": cursor, "h": head},
                )
                rows, stopped, in_parts = rules.take_versions(
                    cur, _version_of, _size_of, max_cells, request.max_bytes, request.split
                )
            if in_parts is not None:
                return self._version_part(conn, request, (in_parts, "", b"", ""), head)
            upto, complete = (rows[-1][12], False) if stopped else (head, True)
        out = [_change(r) for r in rows if r[10] != request.exclude_site]
        return Page(out, upto, complete, None)

    @_reconnecting
    def recent_since(
        self, cursor: int, max_cells: int, max_bytes: int
    ) -> tuple[list[Change], list[bytes], int, int]:
        """Every change of relay versions after ``cursor`` with the site that pushed each
        (``via``), in one snapshot, for a node's in-memory ring of recent batches:
        ``(changes, vias, upto, head)``. Over the budget: nothing (``([], [], cursor, head)``):
        sessions then read from the database themselves."""
        with self._tx(snapshot=True) as conn:
            head = int(self._store_row(conn, "head")[0])
            if cursor >= head:
                return [], [], head, head
            rows = conn.execute(
                f"SELECT {_READ_COLS} FROM {_S}.cells WHERE store_id = %(s)s "
                "AND version > %(c)s AND version <= %(h)s UNION ALL "
                f"SELECT {_GRAVE_READ_COLS} FROM {_S}.graves WHERE store_id = %(s)s "
                "AND version > %(c)s AND version <= %(h)s ORDER BY 13, 10, 1, 2, 3 LIMIT %(n)s",
                {"s": self.store_id, "c": cursor, "h": head, "n": max_cells + 1},
            ).fetchall()
        size = sum(_size_of(r) for r in rows)
        if len(rows) > max_cells or size > max_bytes:
            return [], [], cursor, head
        return [_change(r) for r in rows], [bytes(r[10]) for r in rows], head, head

    def _version_part(
        self,
        conn: psycopg.Connection[Any],
        request: PageRequest,
        after: tuple[int, str, bytes, str],
        head: int,
    ) -> Page:
        """Cells of version ``after[0]`` past key ``after[1:]`` in key order, up to the budget
        (inside the caller's snapshot)."""
        version = after[0]
        with conn.cursor(name="crsync_part") as cur:
            cur.itersize = min(request.max_cells + 1, 500)
            cur.execute(
                f"SELECT {_READ_COLS} FROM {_S}.cells WHERE store_id = %(s)s AND version = %(v)s "
                "AND (tbl, pk, cid) > (%(t)s, %(p)s, %(c)s) UNION ALL "
                f"SELECT {_GRAVE_READ_COLS} FROM {_S}.graves WHERE store_id = %(s)s "
                f"AND version = %(v)s AND (tbl, pk, {_SENTINEL_SQL}) > (%(t)s, %(p)s, %(c)s) "
                "ORDER BY 1, 2, 3",
                {
                    "s": self.store_id,
                    "v": version,
                    "t": after[1].encode(),
                    "p": after[2],
                    "c": after[3].encode(),
                },
            )
            rows, more = rules.take_part(cur, _size_of, request.max_cells, request.max_bytes)
        last = rows[-1] if more else None
        resume = (
            None
            if last is None
            else (version, bytes(last[0]).decode(), bytes(last[1]), bytes(last[2]).decode())
        )
        out = [_change(r) for r in rows if r[10] != request.exclude_site]
        return Page(out, version, resume is None and version >= head, resume)

    # ------------------------------------------------------------------ sizes

    @_reconnecting
    def data_bytes(self) -> int:
        """The store's quota figure: its cells' keys and values plus
        :data:`CELL_OVERHEAD` per cell, kept by every write (one indexed read)."""
        row = self._one(f"SELECT cell_bytes FROM {_S}.stores WHERE store_id = %s", (self.store_id,))
        return 0 if row is None else int(row[0])

    @_reconnecting
    def size_bytes(self) -> int:
        """Bytes PostgreSQL stores for the store's rows (``pg_column_size`` of each row; not
        indexes). Reads every row: an operator's figure, not for hot paths."""
        total = 0
        with self._tx(snapshot=True) as conn:
            for table in _PER_STORE_TABLES:
                row = conn.execute(
                    f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {_S}.{table} t "
                    "WHERE store_id = %s",
                    (self.store_id,),
                ).fetchone()
                total += int(row[0]) if row else 0
        return total

    @_reconnecting
    def stats(self) -> dict[str, Any]:
        """Size and activity figures for operators (the keys of :meth:`RelayStore.stats`)."""
        with self._tx(snapshot=True) as conn:
            row = conn.execute(
                f"SELECT epoch, head, (SELECT count(*) FROM {_S}.cells c WHERE c.store_id = "
                f"s.store_id), (SELECT count(*) FROM {_S}.graves g WHERE g.store_id = "
                f"s.store_id), (SELECT count(*) FROM {_S}.peers p WHERE p.store_id = "
                f"s.store_id), (SELECT max(last_seen) FROM {_S}.peers p WHERE p.store_id = "
                f"s.store_id) FROM {_S}.stores s WHERE store_id = %s",
                (self.store_id,),
            ).fetchone()
        if row is None:
            raise PgStoreError(f"store {self.store_id!r} was removed from the database")
        return {
            "epoch": row[0],
            "head": int(row[1]),
            "cells": int(row[2]),
            "graves": int(row[3]),
            "peers": int(row[4]),
            "last_activity": row[5],
            "bytes": self.size_bytes(),
        }
