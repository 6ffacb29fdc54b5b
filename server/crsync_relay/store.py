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
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

from crsync.change import SENTINEL, make_change
from crsync.errors import CrsyncError
from crsync.merge_rules import RowState
from crsync.pack import SqlValue
from crsync.protocol import TableSchema, quote

from . import store_rules as rules
from .datadir import create_owner_only
from .store_api import StoreBackend
from .store_rules import Collected, DeviceInfo, GcStats, Page, PageRequest, PeerPosition, Push

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
    # Collected tombstones ("graves"): deletes below the horizon, kept as the row's causal
    # length and the relay version of the delete only (see docs/concepts.md, "Tombstones and
    # the horizon"). Served to catch-up reads as collected tombstones, merged as the row.
    "CREATE TABLE IF NOT EXISTS relay_graves (tbl TEXT NOT NULL, pk BLOB NOT NULL, "
    "cl INTEGER NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (tbl, pk)) WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS relay_graves_version ON relay_graves (version)",
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
    # 1: the device stayed away longer than the store's max_offline; its positions were
    # forgotten (only its site binding is kept) and it no longer holds the horizon back.
    ("relay_peers", "departed", "INTEGER NOT NULL DEFAULT 0"),
]


def _read_only_uri(path: Path) -> str:
    """A read-only ``file:`` URI naming exactly ``path`` (``#``, ``?`` and ``%`` in a file name
    are never read as URI syntax)."""
    return path.resolve().as_uri() + "?mode=ro"


def _version_of(row: tuple[Any, ...]) -> int:
    return int(row[11])


# A read's rows: the nine fields of the change (a cell's db_version is its relay version, a
# grave's 0), the pushing site (for leaving a peer's own cells out), the value's length, and
# the relay version (for ordering and cutting). Graves come out as collected tombstones.
_READ_CELLS = (
    "SELECT tbl, pk, cid, val, col_version, version, site_id, cl, seq, "
    "coalesce(via, site_id), length(val), version FROM relay_cells"
)
_READ_GRAVES = (
    "SELECT tbl, pk, '-1', NULL, cl, 0, zeroblob(16), cl, 0, zeroblob(16), NULL, version "
    "FROM relay_graves"
)


def _size_of(row: tuple[Any, ...]) -> int:
    return rules.cell_size(row[1], row[10])


class RelayStore(StoreBackend):
    """A store file, opened with one connection (use one instance per thread of work)."""

    def __init__(
        self,
        path: Path,
        *,
        create: bool = True,
        clock: Callable[[], float] = time.time,
        default_max_offline: float = rules.DEFAULT_MAX_OFFLINE,
    ) -> None:
        """Open (or create) the store file; ``synchronous=FULL``: a commit is durable.

        ``clock``: the time (seconds since the epoch) every ``last_seen`` and :meth:`collect`
        use (tests inject a fake one). ``default_max_offline``: the store's ``max_offline``
        unless an operator set one for it (:meth:`set_max_offline`).
        """
        if not create and not path.exists():
            raise CrsyncError(f"no store at {path}")
        self.path = path
        self.clock = clock
        self.default_max_offline = default_max_offline
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
                "INSERT OR IGNORE INTO relay_meta VALUES ('created', ?)", (self.clock(),)
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
                n += conn.execute("DELETE FROM relay_graves WHERE tbl = ?", (table,)).rowcount
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
            n = int(cur.rowcount)
            if cid is None or cid == SENTINEL:  # a collected tombstone is the row's "-1" cell
                n += conn.execute(
                    "DELETE FROM relay_graves WHERE tbl = ? AND pk = ?", (table, pk)
                ).rowcount
        return n

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
                (base, upto, reason[:2000], self.clock()),
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
        (the sentinel included; a collected tombstone as ``("-1", None, cl, cl)``), none if
        the row was never written."""
        return [
            (str(cid), val, int(cv), int(cl))
            for cid, val, cv, cl in self.conn.execute(
                "SELECT cid, val, col_version, cl FROM relay_cells WHERE tbl = ? AND pk = ? "
                "UNION ALL SELECT '-1', NULL, cl, cl FROM relay_graves WHERE tbl = ? AND pk = ?",
                (table, pk, table, pk),
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
            "max(received_upto, excluded.received_upto), last_seen = excluded.last_seen, "
            "departed = 0",
            (site_id, upto, self.clock()),
        )

    def seen(self, site_id: bytes) -> None:
        """A device connected now: record it as seen (a departed device is re-admitted: it
        holds the horizon back again from its next ``received``). No write when it was seen
        within the last minute (a hello costs no commit then)."""
        now = self.clock()
        row = self.conn.execute(
            "SELECT last_seen, departed FROM relay_peers WHERE site_id = ?", (site_id,)
        ).fetchone()
        if row is not None and row[0] is not None and not row[1] and row[0] >= now - 60:
            return
        with self._transaction():
            self.conn.execute(
                "INSERT INTO relay_peers (site_id, last_seen) VALUES (?, ?) ON CONFLICT "
                "(site_id) DO UPDATE SET last_seen = excluded.last_seen, departed = 0",
                (site_id, now),
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
            states, via_of, graves = self._load_many(list(groups))
            merged = rules.merge_groups(groups, states, via_of, version, site_id)
            dead, rows_out = merged.rewritten, merged.cells
            if dead:
                conn.executemany("DELETE FROM relay_cells WHERE tbl = ? AND pk = ?", dead)
                buried = [key for key in dead if key in graves]
                if buried:  # the row won over its collected tombstone: its cells replace it
                    conn.executemany("DELETE FROM relay_graves WHERE tbl = ? AND pk = ?", buried)
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
                "max(pushed_upto, excluded.pushed_upto), last_seen = excluded.last_seen, "
                "departed = 0",
                (site_id, push.upto, self.clock()),
            )
            if meta:
                conn.executemany("INSERT OR REPLACE INTO relay_meta VALUES (?, ?)", meta.items())
            return head, merged.wins

    def _load_many(
        self, keys: list[tuple[str, bytes]]
    ) -> tuple[
        dict[tuple[str, bytes], RowState],
        dict[tuple[str, bytes, str], bytes | None],
        set[tuple[str, bytes]],
    ]:
        """Current state of many rows, read in chunks (one query per 400 rows of a table),
        the pushing site of each of their cells, and which rows are collected tombstones
        (their state: deleted with their causal length, :func:`store_rules.grave_state`)."""
        via_of: dict[tuple[str, bytes, str], bytes | None] = {}
        by_table: dict[str, list[bytes]] = {}
        for table, pk in keys:
            by_table.setdefault(table, []).append(pk)
        rows_of: dict[tuple[str, bytes], list[tuple[Any, ...]]] = {}
        graves: dict[tuple[str, bytes], int] = {}
        # Tables with collected tombstones (one look each): a store that never collected, or
        # a table without any, costs no grave lookups.
        with_graves = {
            t
            for t in by_table
            if self.conn.execute(
                "SELECT 1 FROM relay_graves WHERE tbl = ? LIMIT 1", (t,)
            ).fetchone()
            is not None
        }
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
                if table not in with_graves:
                    continue
                for pk, cl in self.conn.execute(
                    f"SELECT pk, cl FROM relay_graves WHERE tbl = ? AND pk IN "
                    f"({', '.join('?' * len(chunk))})",
                    (table, *chunk),
                ):
                    graves[(table, pk)] = int(cl)
        states = {key: rules.row_state(rows) for key, rows in rows_of.items()}
        for key, cl in graves.items():
            states.setdefault(key, rules.grave_state(cl))
        return states, via_of, set(graves)

    # ------------------------------------------------------------- the horizon

    def horizon(self) -> int:
        """The store's horizon (0 until the first :meth:`collect`): every device seen within
        ``max_offline`` merged every relay version up to it."""
        h = self._meta("horizon")
        return 0 if h is None else int(h)

    def max_offline(self) -> float:
        """Seconds a device may stay away before the horizon passes it (the operator's
        setting for this store, else the relay's default)."""
        v = self._meta("max_offline")
        return self.default_max_offline if v is None else float(v)

    def set_max_offline(self, seconds: float) -> None:
        """Set this store's ``max_offline`` (an operator's setting, kept in the store)."""
        rules.check_max_offline(seconds)
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO relay_meta VALUES ('max_offline', ?)", (float(seconds),)
            )

    def devices(self) -> list[DeviceInfo]:
        """Every device the store recorded (its reactor's site included), by site id."""
        return [
            DeviceInfo(bytes(site), int(pushed), int(received), seen, bool(departed))
            for site, pushed, received, seen, departed in self.conn.execute(
                "SELECT site_id, pushed_upto, received_upto, last_seen, departed "
                "FROM relay_peers ORDER BY site_id"
            )
        ]

    def collect(self, connected: Collection[bytes] = ()) -> Collected:
        """Move the horizon and collect below it, in one transaction: tombstones of relay
        versions up to the horizon become collected tombstones (graves), and devices not seen
        for ``max_offline`` depart (their positions are forgotten, their site binding kept).
        ``connected``: sites connected now (seen now, whatever was recorded)."""
        with self._transaction() as conn:
            now = self.clock()
            window = self.max_offline()
            devices = self.devices()
            exclude = self.relay_site()
            stored = self.horizon()
            gone = [s for s in rules.departing(devices, now, window) if s not in connected]
            horizon = rules.compute_horizon(
                devices, self.head, stored, now, window, exclude=exclude, connected=connected
            )
            moved = 0
            if horizon > stored:
                # Tombstones at versions up to the stored horizon were collected when it was
                # set (a later merge gives any tombstone it writes a new version).
                low = stored
                moved = conn.execute(
                    "INSERT OR REPLACE INTO relay_graves (tbl, pk, cl, version) "
                    "SELECT tbl, pk, cl, version FROM relay_cells WHERE version > ? "
                    "AND version <= ? AND cid = '-1' AND cl % 2 = 0",
                    (low, horizon),
                ).rowcount
                if moved:
                    conn.execute(
                        "DELETE FROM relay_cells WHERE (tbl, pk) IN (SELECT tbl, pk FROM "
                        "relay_cells WHERE version > ? AND version <= ? AND cid = '-1' "
                        "AND cl % 2 = 0)",
                        (low, horizon),
                    )
            if gone:
                conn.executemany(
                    "UPDATE relay_peers SET pushed_upto = 0, received_upto = 0, departed = 1 "
                    "WHERE site_id = ?",
                    [(s,) for s in gone],
                )
            if horizon != stored or self._meta("horizon") is None:
                conn.execute("INSERT OR REPLACE INTO relay_meta VALUES ('horizon', ?)", (horizon,))
        return Collected(horizon, int(moved), len(gone))

    def gc_stats(self) -> GcStats:
        """Tombstones, graves, the horizon and its age, the devices (see :class:`GcStats`)."""
        with self._transaction(read=True) as conn:
            tombstones = conn.execute(
                "SELECT count(*) FROM relay_cells WHERE cid = '-1' AND cl % 2 = 0"
            ).fetchone()[0]
            graves = conn.execute("SELECT count(*) FROM relay_graves").fetchone()[0]
            devices = self.devices()
            head, horizon, window = self.head, self.horizon(), self.max_offline()
            exclude = self.relay_site()
        age, soon = rules.gc_figures(devices, head, horizon, self.clock(), window, exclude)
        shown = [d for d in devices if d.site_id != exclude]
        return GcStats(int(tombstones), int(graves), horizon, age, shown, soon, window)

    def _next_version(self, cursor: int) -> int | None:
        row = self.conn.execute(
            "SELECT min(v) FROM (SELECT min(version) AS v FROM relay_cells WHERE version > ?1 "
            "UNION ALL SELECT min(version) FROM relay_graves WHERE version > ?1)",
            (cursor,),
        ).fetchone()
        return None if row[0] is None else int(row[0])

    def next_version(self, cursor: int) -> int | None:
        """The first relay version after ``cursor`` holding anything (None: none)."""
        return self._next_version(cursor)

    def remaining(self, cursor: int, after: tuple[int, str, bytes, str] | None = None) -> int:
        """How many cells and graves a peer at ``cursor`` has yet to receive (``after``: it
        holds the changes of version ``after[0]`` up to that key already)."""
        with self._transaction(read=True) as conn:
            n = conn.execute(
                "SELECT (SELECT count(*) FROM relay_cells WHERE version > ?1) + "
                "(SELECT count(*) FROM relay_graves WHERE version > ?1)",
                (cursor,),
            ).fetchone()[0]
            if after is not None:
                n -= conn.execute(
                    "SELECT (SELECT count(*) FROM relay_cells WHERE version = ?1 AND "
                    "(tbl, pk, cid) <= (?2, ?3, ?4)) + (SELECT count(*) FROM relay_graves "
                    "WHERE version = ?1 AND (tbl, pk, '-1') <= (?2, ?3, ?4))",
                    after,
                ).fetchone()[0]
        return max(0, int(n))

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
                first = self._next_version(cursor)
                if first is not None and first <= head:
                    n = conn.execute(
                        "SELECT (SELECT count(*) FROM (SELECT 1 FROM relay_cells WHERE "
                        "version = ?1 LIMIT ?2)) + (SELECT count(*) FROM (SELECT 1 FROM "
                        "relay_graves WHERE version = ?1 LIMIT ?2))",
                        (first, max_cells + 1),
                    ).fetchone()[0]
                    if n > max_cells:
                        return self._version_part(request, (first, "", b"", ""), head)
            cur = conn.execute(
                f"{_READ_CELLS} WHERE version > ?1 AND version <= ?2 UNION ALL "
                f"{_READ_GRAVES} WHERE version > ?1 AND version <= ?2 ORDER BY 12, 9",
                (cursor, head),
            )
            rows, stopped, in_parts = rules.take_versions(
                cur, _version_of, _size_of, max_cells, request.max_bytes, request.split
            )
            cur.close()
            if in_parts is not None:
                return self._version_part(request, (in_parts, "", b"", ""), head)
            upto, complete = (rows[-1][11], False) if stopped else (head, True)
        out = [make_change(r[:9]) for r in rows if r[9] != request.exclude_site]
        return Page(out, upto, complete, None)

    def _version_part(
        self, request: PageRequest, after: tuple[int, str, bytes, str], head: int
    ) -> Page:
        """Cells of version ``after[0]`` past key ``after[1:]`` (in primary-key order, which the
        version index gives), up to the budget (inside the caller's read transaction)."""
        version = after[0]
        cur = self.conn.execute(
            f"{_READ_CELLS} WHERE version = ?1 AND (tbl, pk, cid) > (?2, ?3, ?4) UNION ALL "
            f"{_READ_GRAVES} WHERE version = ?1 AND (tbl, pk, '-1') > (?2, ?3, ?4) "
            "ORDER BY 1, 2, 3",
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
        graves = self.conn.execute("SELECT count(*) FROM relay_graves").fetchone()[0]
        last = self.conn.execute("SELECT max(last_seen) FROM relay_peers").fetchone()[0]
        npeers = self.conn.execute("SELECT count(*) FROM relay_peers").fetchone()[0]
        size = self.size_bytes()
        return {
            "epoch": self.epoch,
            "head": self.head,
            "cells": cells,
            "graves": graves,
            "peers": npeers,
            "last_activity": last,
            "bytes": size,
        }
