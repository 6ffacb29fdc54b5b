"""One relay store: a SQLite file of change rows, merged on metadata alone (no app schema).

The relay keeps the latest state of every cell, as change rows keyed by ``(table, pk, cid)``,
and merges pushed batches with the same rules as devices (:mod:`crsync.merge_rules`). Table and
column names are data here: the relay never builds SQL from them. Every committed batch gets the
next *relay version*; peers' catch-up cursors live in that version space. ``epoch`` is minted
when the file is created, so a lost or reset store is recognised by every peer.

All methods are blocking (SQLite); the server calls them from worker threads, one at a time
per connection object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from crsync.change import make_change
from crsync.errors import CrsyncError
from crsync.merge_rules import RowState
from crsync.pack import SqlValue
from crsync.protocol import TableSchema, quote

from . import store_rules as rules
from .datadir import create_owner_only
from .store_api import StoreBackend
from .store_rules import Page, PageRequest, PeerPosition, Push

log = logging.getLogger(__name__)

_DDL = [
    "CREATE TABLE IF NOT EXISTS relay_meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS relay_cells (tbl TEXT NOT NULL, pk BLOB NOT NULL, "
    "cid TEXT NOT NULL, val, col_version INTEGER NOT NULL, site_id BLOB NOT NULL, "
    "cl INTEGER NOT NULL, seq INTEGER NOT NULL, version INTEGER NOT NULL, via BLOB, "
    "PRIMARY KEY (tbl, pk, cid)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS relay_cells_version ON relay_cells (version)",
    "CREATE TABLE IF NOT EXISTS relay_peers (site_id BLOB PRIMARY KEY, pushed_upto INTEGER "
    "NOT NULL DEFAULT 0, received_upto INTEGER NOT NULL DEFAULT 0, last_seen REAL, "
    "key_hash BLOB)",
    "CREATE TABLE IF NOT EXISTS relay_schema (tbl TEXT PRIMARY KEY, pk TEXT NOT NULL, "
    "columns TEXT NOT NULL)",
    # Relay versions (base, upto] the store's reactor failed on again and again: skipped so
    # that later changes are handled, kept here with the reason for the operator.
    "CREATE TABLE IF NOT EXISTS reactor_set_aside (base INTEGER PRIMARY KEY, "
    "upto INTEGER NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL)",
]
# Columns added after the first release: (table, column, declaration), added to older files.
_ADDED_COLUMNS = [
    # The site of the connection that pushed the cell (the author field is only a claim):
    # broadcasts skip a cell for the connection that pushed it, never for its claimed author.
    ("relay_cells", "via", "BLOB"),
    # sha256 of the site key a site id is bound to (None: not bound, an older client).
    ("relay_peers", "key_hash", "BLOB"),
    # What every device that announced the table requires: columns all declare NOT NULL (JSON
    # list), and whether all key the table by the rowid (integers only). NULL: never announced.
    ("relay_schema", "not_null", "TEXT"),
    ("relay_schema", "intkey", "INTEGER"),
]


def _read_only_uri(path: Path) -> str:
    """A read-only ``file:`` URI naming exactly ``path`` (``#``, ``?`` and ``%`` in a file name
    are never read as URI syntax)."""
    return path.resolve().as_uri() + "?mode=ro"


def _version_of(row: tuple[Any, ...]) -> int:
    return int(row[5])


def _size_of(row: tuple[Any, ...]) -> int:
    return rules.cell_size(row[1], row[10])


class RelayStore(StoreBackend):
    """A store file, opened with one connection (use one instance per thread of work)."""

    def __init__(self, path: Path, *, create: bool = True) -> None:
        """Open (or create) the store file; ``synchronous=FULL``: a commit is durable."""
        if not create and not path.exists():
            raise CrsyncError(f"no store at {path}")
        self.path = path
        self._schema: dict[str, TableSchema] | None = None
        self._unconstrained: set[str] = set()  # tables recorded before constraints existed
        if create:
            create_owner_only(path)  # stores hold every user's data
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA busy_timeout = 30000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = FULL")
        # Many stores may be open at once: keep each connection's page cache small (256 KiB).
        self.conn.execute("PRAGMA cache_size = -256")
        with self._transaction():
            for stmt in _DDL:
                self.conn.execute(stmt)
            for table, column, decl in _ADDED_COLUMNS:
                have = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            self.conn.execute(
                "INSERT OR IGNORE INTO relay_meta VALUES ('epoch', ?)", (uuid.uuid4().hex,)
            )
            self.conn.execute("INSERT OR IGNORE INTO relay_meta VALUES ('head', 0)")
            self.conn.execute(
                "INSERT OR IGNORE INTO relay_meta VALUES ('created', ?)", (time.time(),)
            )
        self.epoch: str = self._meta("epoch")

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()

    @contextlib.contextmanager
    def _transaction(self, *, read: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction: committed when the block ends, rolled back if it raises. Every
        write to the store file goes through it (BEGIN IMMEDIATE); ``read``: a read of one
        consistent snapshot (a deferred BEGIN, never writing)."""
        conn = self.conn
        conn.execute("BEGIN" if read else "BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _meta(self, key: str) -> Any:
        row = self.conn.execute("SELECT value FROM relay_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    @property
    def head(self) -> int:
        """The latest relay version."""
        return int(self._meta("head"))

    # ------------------------------------------------------------------ schema

    def check_schema(self, schema: dict[str, TableSchema]) -> str | None:
        """Compare a peer's replicated schema with the store's; record additive differences.

        Writes (one transaction) only when the peer announces something new. Bounded: at most
        ``MAX_TABLES`` tables per store and ``MAX_COLUMNS`` columns per table, names of at most
        ``MAX_NAME`` bytes.

        Returns:
            None if compatible, else a message naming the table and the difference.
        """
        problem, new = rules.plan_schema(self.schema(), self._unconstrained, schema)
        if problem is not None or not new:
            return problem  # nothing to record: no write, no commit
        conn = self.conn
        try:
            with self._transaction():
                conn.executemany(
                    "INSERT OR REPLACE INTO relay_schema (tbl, pk, columns, not_null, intkey) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            t,
                            json.dumps(list(s.pk)),
                            json.dumps(list(s.columns)),
                            json.dumps(list(s.notnull)),
                            int(s.integer_key),
                        )
                        for t, s in new.items()
                    ],
                )
        finally:
            self._schema = None
        return None

    def schema(self) -> dict[str, TableSchema]:
        """The union of the replicated schemas peers announced (parsed once, then cached)."""
        if self._schema is None:
            self._schema = {
                t: TableSchema(
                    tuple(json.loads(pk)),
                    tuple(json.loads(cols)),
                    tuple(json.loads(notnull)) if notnull else (),
                    bool(intkey),
                )
                for t, pk, cols, notnull, intkey in self.conn.execute(
                    "SELECT tbl, pk, columns, not_null, intkey FROM relay_schema"
                )
            }
            self._unconstrained = {
                t
                for (t,) in self.conn.execute("SELECT tbl FROM relay_schema WHERE not_null IS NULL")
            }
        return dict(self._schema)

    def forget_table(self, table: str) -> int:
        """Remove a table's announced schema and every cell of it, and give the store a new
        epoch (an operator's repair, relay stopped): a squatted or wrongly announced table is
        announced afresh, and devices re-push what they hold.

        Returns:
            How many cells were removed.
        """
        conn = self.conn
        try:
            with self._transaction():
                n = conn.execute("DELETE FROM relay_cells WHERE tbl = ?", (table,)).rowcount
                gone = conn.execute("DELETE FROM relay_schema WHERE tbl = ?", (table,)).rowcount
                # A new epoch: every device re-pushes what it holds, so the table's rows come back
                # under the key devices announce now.
                conn.execute(
                    "UPDATE relay_meta SET value = ? WHERE key = 'epoch'", (uuid.uuid4().hex,)
                )
        finally:
            self._schema = None
        if not gone and not n:
            raise CrsyncError(f"store has no table {quote(table)}")
        return int(n)

    def remove_cells(self, table: str, pk: bytes, cid: str | None) -> int:
        """Remove one cell (``cid``) or a whole row (``cid`` None) from the store: an
        operator's repair of a poisoned cell (relay stopped). Devices that merged it keep it;
        devices that catch up later never receive it.

        Returns:
            How many cells were removed.
        """
        conn = self.conn
        with self._transaction():
            if cid is None:
                cur = conn.execute("DELETE FROM relay_cells WHERE tbl = ? AND pk = ?", (table, pk))
            else:
                cur = conn.execute(
                    "DELETE FROM relay_cells WHERE tbl = ? AND pk = ? AND cid = ?",
                    (table, pk, cid),
                )
        return int(cur.rowcount)

    # ------------------------------------------------------------------ peers

    def peer(self, site_id: bytes) -> PeerPosition:
        """Recorded positions of a peer (zeros if never seen)."""
        row = self.conn.execute(
            "SELECT pushed_upto, received_upto, last_seen FROM relay_peers WHERE site_id = ?",
            (site_id,),
        ).fetchone()
        if row is None:
            return PeerPosition(site_id, 0, 0, None)
        return PeerPosition(site_id, row[0], row[1], row[2])

    def set_aside_reactor_batch(self, base: int, upto: int, reason: str) -> None:
        """Skip relay versions ``(base, upto]`` for the reactor: record them with the reason
        and move the reactor's cursor past them, in one transaction."""
        conn = self.conn
        with self._transaction():
            conn.execute(
                "INSERT OR REPLACE INTO reactor_set_aside VALUES (?, ?, ?, ?)",
                (base, upto, reason[:2000], time.time()),
            )
            conn.execute("INSERT OR REPLACE INTO relay_meta VALUES ('reactor_cursor', ?)", (upto,))

    def reactor_state(self) -> tuple[bytes, int]:
        """The site id the store's reactor writes under (minted on first use) and the relay
        version its reactor has handled up to (0 if it never ran)."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO relay_meta VALUES ('relay_site', ?)", (uuid.uuid4().bytes,)
            )
            site = self._meta("relay_site")
            cursor = self._meta("reactor_cursor")
        return bytes(site), 0 if cursor is None else int(cursor)

    def save_reactor_cursor(self, cursor: int) -> None:
        """Record that the store's reactor handled every relay version up to ``cursor``."""
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO relay_meta VALUES ('reactor_cursor', ?)", (cursor,)
            )

    def row_cells(self, table: str, pk: bytes) -> list[tuple[str, SqlValue, int, int]]:
        """The cells the store holds for one row: ``(cid, value, col_version, cl)`` each
        (the sentinel included), none if the row was never written."""
        return [
            (str(cid), val, int(cv), int(cl))
            for cid, val, cv, cl in self.conn.execute(
                "SELECT cid, val, col_version, cl FROM relay_cells WHERE tbl = ? AND pk = ?",
                (table, pk),
            )
        ]

    # ---------------------------------------------------- store files not open as a store

    @staticmethod
    def reactor_behind(path: Path) -> bool:
        """True if a store file's reactor cursor is behind its head (a read-only peek; False
        if the file cannot be read as a store)."""
        try:
            conn = sqlite3.connect(_read_only_uri(path), uri=True)
        except sqlite3.Error:
            return False
        try:
            meta = dict(
                conn.execute(
                    "SELECT key, value FROM relay_meta WHERE key IN ('head', 'reactor_cursor')"
                ).fetchall()
            )
        except sqlite3.Error:
            return False
        finally:
            conn.close()
        return int(meta.get("reactor_cursor", 0)) < int(meta.get("head", 0))

    @staticmethod
    def check_file(path: Path) -> None:
        """A readable relay store that passes SQLite's integrity check, or CrsyncError."""
        try:
            conn = sqlite3.connect(_read_only_uri(path), uri=True)
            try:
                conn.execute("SELECT value FROM relay_meta WHERE key = 'epoch'").fetchone()
                ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise CrsyncError(f"{path} is not a relay store backup: {exc}") from None
        if ok != "ok":
            raise CrsyncError(f"{path} fails its integrity check: {ok}")

    @staticmethod
    def backup_file(src: Path, dest: Path) -> tuple[int, str]:
        """Copy the store file ``src`` into the existing empty file ``dest`` with SQLite's
        online backup (consistent while a relay writes ``src``).

        Returns:
            The relay version (head) captured in the copy and the copy's integrity check
            result (``"ok"`` if sound).

        Raises:
            sqlite3.Error: the copy failed.
        """
        source = sqlite3.connect(_read_only_uri(src), uri=True)
        try:
            target = sqlite3.connect(dest)
            try:
                source.backup(target)
                head = target.execute("SELECT value FROM relay_meta WHERE key = 'head'").fetchone()
                check = target.execute("PRAGMA integrity_check").fetchone()[0]
            finally:
                target.close()
        finally:
            source.close()
        return (int(head[0]) if head else 0), str(check)

    @staticmethod
    def set_file_epoch(path: Path, epoch: str) -> None:
        """Give a store file (not open anywhere) a new epoch."""
        try:
            conn = sqlite3.connect(path)
            try:
                with conn:
                    conn.execute("UPDATE relay_meta SET value = ? WHERE key = 'epoch'", (epoch,))
            finally:
                conn.close()
        except sqlite3.Error as exc:
            raise CrsyncError(f"cannot set the epoch of {path}: {exc}") from None

    @staticmethod
    def file_epoch(path: Path) -> str:
        """A store file's epoch (read-only)."""
        conn = sqlite3.connect(_read_only_uri(path), uri=True)
        try:
            row = conn.execute("SELECT value FROM relay_meta WHERE key = 'epoch'").fetchone()
            return str(row[0])
        finally:
            conn.close()

    def relay_site(self) -> bytes | None:
        """The site id this store's reactor writes under (None until a reactor ran)."""
        site = self._meta("relay_site")
        return None if site is None else bytes(site)

    def _key_hash(self, site_id: bytes) -> bytes | None:
        row = self.conn.execute(
            "SELECT key_hash FROM relay_peers WHERE site_id = ?", (site_id,)
        ).fetchone()
        return None if row is None else row[0]

    def _bind_key(self, site_id: bytes, digest: bytes) -> bytes:
        with self._transaction():
            self.conn.execute(
                "INSERT INTO relay_peers (site_id, key_hash) VALUES (?, ?) ON CONFLICT "
                "(site_id) DO UPDATE SET key_hash = excluded.key_hash WHERE key_hash IS NULL",
                (site_id, digest),
            )
        bound = self._key_hash(site_id)
        assert bound is not None
        return bound

    def record_received(self, site_id: bytes, upto: int) -> None:
        """Record that a peer merged everything up to relay version ``upto`` (no write when
        that is not news)."""
        row = self.conn.execute(
            "SELECT received_upto FROM relay_peers WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is not None and row[0] >= upto:
            return
        self.conn.execute(
            "INSERT INTO relay_peers (site_id, received_upto, last_seen) VALUES (?, ?, ?) "
            "ON CONFLICT (site_id) DO UPDATE SET received_upto = "
            "max(received_upto, excluded.received_upto), last_seen = excluded.last_seen",
            (site_id, upto, time.time()),
        )

    # ------------------------------------------------------------------ merge

    def _merge(self, push: Push) -> tuple[int, int]:
        """Durable when it returns (WAL, synchronous=FULL)."""
        site_id, changes, meta = push.site_id, push.changes, push.meta
        reserved = self._meta("relay_site") if push.announced_only else None
        changes = rules.drop_reserved(changes, reserved, site_id)
        groups = rules.check_unit(changes, self.schema(), push.announced_only)
        conn = self.conn
        with self._transaction():
            head = self.head
            version = head + 1
            states, via_of = self._load_many(list(groups))
            merged = rules.merge_groups(groups, states, via_of, version, site_id)
            dead, rows_out = merged.rewritten, merged.cells
            if dead:
                conn.executemany("DELETE FROM relay_cells WHERE tbl = ? AND pk = ?", dead)
            if rows_out:
                conn.executemany(
                    "INSERT INTO relay_cells (tbl, pk, cid, val, col_version, site_id, cl, seq, "
                    "version, via) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows_out,
                )
                conn.execute("UPDATE relay_meta SET value = ? WHERE key = 'head'", (version,))
                head = version
            conn.execute(
                "INSERT INTO relay_peers (site_id, pushed_upto, last_seen) VALUES (?, ?, ?) "
                "ON CONFLICT (site_id) DO UPDATE SET pushed_upto = "
                "max(pushed_upto, excluded.pushed_upto), last_seen = excluded.last_seen",
                (site_id, push.upto, time.time()),
            )
            if meta:
                conn.executemany("INSERT OR REPLACE INTO relay_meta VALUES (?, ?)", meta.items())
            return head, merged.wins

    def _load_many(
        self, keys: list[tuple[str, bytes]]
    ) -> tuple[dict[tuple[str, bytes], RowState], dict[tuple[str, bytes, str], bytes | None]]:
        """Current state of many rows, read in chunks (one query per 400 rows of a table),
        and the pushing site of each of their cells."""
        via_of: dict[tuple[str, bytes, str], bytes | None] = {}
        by_table: dict[str, list[bytes]] = {}
        for table, pk in keys:
            by_table.setdefault(table, []).append(pk)
        rows_of: dict[tuple[str, bytes], list[tuple[Any, ...]]] = {}
        for table, pks in by_table.items():
            for i in range(0, len(pks), 400):
                chunk = pks[i : i + 400]
                for row in self.conn.execute(
                    "SELECT pk, cid, val, col_version, site_id, cl, seq, version, via "
                    f"FROM relay_cells WHERE tbl = ? AND pk IN ({', '.join('?' * len(chunk))})",
                    (table, *chunk),
                ):
                    rows_of.setdefault((table, row[0]), []).append(row[1:8])
                    via_of[(table, row[0], row[1])] = row[8]
        return {key: rules.row_state(rows) for key, rows in rows_of.items()}, via_of

    # ------------------------------------------------------------------ reads

    def _read(self, request: PageRequest) -> Page:
        cursor, max_cells = request.cursor, request.max_cells
        with self._transaction(read=True) as conn:
            head = self.head
            if request.after is not None:
                return self._version_part(request, request.after, head)
            if cursor >= head:
                return Page([], head, True, None)
            if request.split:
                # A first version over the cell budget is read in parts (below, that is found
                # only after sorting all of it by seq): counted first, on the index.
                first = conn.execute(
                    "SELECT min(version) FROM relay_cells WHERE version > ?", (cursor,)
                ).fetchone()[0]
                if first is not None and first <= head:
                    n = conn.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM relay_cells WHERE version = ? "
                        "LIMIT ?)",
                        (first, max_cells + 1),
                    ).fetchone()[0]
                    if n > max_cells:
                        return self._version_part(request, (first, "", b"", ""), head)
            cur = conn.execute(
                "SELECT tbl, pk, cid, val, col_version, version, site_id, cl, seq, "
                "coalesce(via, site_id), length(val) FROM relay_cells "
                "WHERE version > ? AND version <= ? ORDER BY version, seq",
                (cursor, head),
            )
            rows, stopped, in_parts = rules.take_versions(
                cur, _version_of, _size_of, max_cells, request.max_bytes, request.split
            )
            cur.close()
            if in_parts is not None:
                return self._version_part(request, (in_parts, "", b"", ""), head)
            upto, complete = (rows[-1][5], False) if stopped else (head, True)
        out = [make_change(r[:9]) for r in rows if r[9] != request.exclude_site]
        return Page(out, upto, complete, None)

    def _version_part(
        self, request: PageRequest, after: tuple[int, str, bytes, str], head: int
    ) -> Page:
        """Cells of version ``after[0]`` past key ``after[1:]`` (in primary-key order, which the
        version index gives), up to the budget (inside the caller's read transaction)."""
        version = after[0]
        cur = self.conn.execute(
            "SELECT tbl, pk, cid, val, col_version, version, site_id, cl, seq, "
            "coalesce(via, site_id), length(val) FROM relay_cells "
            "WHERE version = ? AND (tbl, pk, cid) > (?, ?, ?) ORDER BY tbl, pk, cid",
            after,
        )
        rows, more = rules.take_part(cur, _size_of, request.max_cells, request.max_bytes)
        cur.close()
        resume = (version, rows[-1][0], rows[-1][1], rows[-1][2]) if more else None
        out = [make_change(r[:9]) for r in rows if r[9] != request.exclude_site]
        return Page(out, version, resume is None and version >= head, resume)

    def size_bytes(self) -> int:
        """Bytes the store's files occupy on disk: the database file plus its WAL."""
        size = 0
        for f in (self.path, Path(str(self.path) + "-wal")):
            try:
                size += f.stat().st_size
            except FileNotFoundError:
                pass
        return size

    def data_bytes(self) -> int:
        """Size of the database as of its last commit (page count x page size), whether its
        pages are in the main file yet or still in the WAL. The WAL file itself is not counted:
        it holds recent versions of pages (a few MB at most between checkpoints, reused rather
        than grown), so its size reflects write history, not what the store holds."""
        pages = self.conn.execute("PRAGMA page_count").fetchone()[0]
        page_size = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int(pages) * int(page_size)

    def stats(self) -> dict[str, Any]:
        """Size and activity figures for operators."""
        cells = self.conn.execute("SELECT count(*) FROM relay_cells").fetchone()[0]
        last = self.conn.execute("SELECT max(last_seen) FROM relay_peers").fetchone()[0]
        npeers = self.conn.execute("SELECT count(*) FROM relay_peers").fetchone()[0]
        size = self.size_bytes()
        return {
            "epoch": self.epoch,
            "head": self.head,
            "cells": cells,
            "peers": npeers,
            "last_activity": last,
            "bytes": size,
        }
