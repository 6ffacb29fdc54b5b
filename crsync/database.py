"""``crsync.Database``: a SQLite file with replicated tables, its change feed and its merge.

Versions. ``crsync_clock.db_version`` is the *open* version: every local write and every merge
is stamped with it. Reading the change feed (or :attr:`Database.db_version`) *seals* it: inside
a write transaction, if anything was stamped with the open version, the open version moves one
up. SQLite serialises writers, so every transaction committed before a seal carries a version at
or below the sealed one and every later transaction a higher one: all changes of one transaction
share one db_version, and a reader that asks for ``changes(since=V)`` after reading ``V`` sees
every later write. No commit hook and no function registered on the writing connection is
needed, so writes from any connection or process are captured.

``Database`` is the public facade of the device storage. It owns the connection, transactions,
the metadata tables' DDL, site ids and the registry of tracked tables; the work is in modules
named for what they hold: :mod:`crsync.tracking` (track, untrack, migrate, re-adoption),
:mod:`crsync.versions` (sealing), :mod:`crsync.feed` (the change feed),
:mod:`crsync.merge` (the storage side of the merge), :mod:`crsync.rejected` (set-aside
changes) and :mod:`crsync.positions` (peer positions). See docs/code-map.md.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from . import adoption, feed, identity, merge, positions, rejected, tracking, versions
from ._gc import gc_paused
from .change import Change, validate_changes
from .errors import (
    CrsyncError,
    InvalidChangeError,
    ReadOnlyError,
    SchemaError,
)
from .pack import SqlValue, pack_pk
from .schema import (
    fingerprint_of,
    is_rowid_alias,
    quote_ident,
    validate_table,
)
from .tracking import Tracked
from .triggers import (
    cell_columns,
    generate,
    meta_table_name,
)

if TYPE_CHECKING:
    from .live import ChangeFeed, LiveQuery, RowChange

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
"""The on-disk format of crsync's metadata. 2: ``dbv`` is nullable and its index partial (a
compacted tombstone, see :func:`crsync.positions.apply_horizon`), ``crsync_peers.local``, and
``crsync_staged``. A format-1 file is migrated when opened read-write
(:func:`crsync.tracking.migrate_format_1`); read-only, it is read as it is."""
_READABLE_FORMATS = (1, FORMAT_VERSION)

_METADATA_DDL = [
    "CREATE TABLE IF NOT EXISTS crsync_meta (key TEXT PRIMARY KEY, value)",
    "CREATE TABLE IF NOT EXISTS crsync_sites ("
    "ordinal INTEGER PRIMARY KEY, site_id BLOB NOT NULL UNIQUE)",
    "CREATE TABLE IF NOT EXISTS crsync_clock (id INTEGER PRIMARY KEY CHECK (id = 0), "
    "db_version INTEGER NOT NULL, merging INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO crsync_clock VALUES (0, 1, 0)",
    # Earlier crsync versions kept the feed view in the file, where it made ALTER TABLE fail; it is
    # now a TEMP view of each crsync connection (crsync.tracking.create_feed_view).
    "DROP VIEW IF EXISTS main.crdt_changes",
    "CREATE TABLE IF NOT EXISTS crsync_tables (name TEXT PRIMARY KEY, slots TEXT NOT NULL, "
    "pk TEXT NOT NULL, fingerprint TEXT NOT NULL)",
    # Changes for tables or columns this database does not have (yet): kept, never executed,
    # applied when the table is tracked or migrated.
    "CREATE TABLE IF NOT EXISTS crsync_pending (tbl TEXT NOT NULL, pk BLOB NOT NULL, "
    "cid TEXT NOT NULL, val, col_version INTEGER NOT NULL, db_version INTEGER NOT NULL, "
    "site_id BLOB NOT NULL, cl INTEGER NOT NULL, seq INTEGER NOT NULL, "
    "PRIMARY KEY (tbl, pk, cid, site_id, col_version, cl)) WITHOUT ROWID",
    # Changes from other devices this database cannot apply (see crsync.rejected).
    rejected.DDL,
    # Peer tracking: acknowledged positions per peer and direction (see crsync.positions).
    positions.DDL,
    # Parts of a catch-up unit received so far (see crsync.positions.stage).
    positions.STAGED_DDL,
]


@attrs.frozen
class MetadataStats:
    """What crsync's metadata costs in a database (:meth:`Database.metadata_stats`)."""

    rows: int
    """Live replicated rows (in every tracked table)."""
    tombstones: int
    """Deleted rows kept with their delete's clock (a full tombstone)."""
    collected: int
    """Deleted rows compacted below the relay's horizon: only the key and causal length."""
    metadata_bytes: int
    """Bytes of the file used by crsync's metadata (tables and indexes)."""
    metadata_bytes_exact: bool
    """True: ``metadata_bytes`` was measured (SQLite's ``dbstat``); False: estimated from the
    stored length of each metadata row's fields (this SQLite has no ``dbstat``)."""
    bytes_per_row: float | None
    """``metadata_bytes`` per live row (None without live rows)."""
    horizon: int | None
    """The relay's horizon as last heard (a relay version), None if none was announced."""
    horizon_seen_at: float | None
    """When that horizon was heard (seconds since the Unix epoch)."""


class Database:
    """A SQLite database whose tracked tables replicate.

    Create it with :func:`crsync.connect`. The app keeps writing plain SQL through
    :attr:`conn`; crsync's triggers record every changed cell.
    """

    def __init__(self, conn: sqlite3.Connection, *, owns_connection: bool = True) -> None:
        """Wrap a connection (see :func:`crsync.connect`), creating the metadata on first use."""
        self.conn = conn
        self._owns = owns_connection
        self._tracked: dict[str, Tracked] = {}
        self._schema_version = -1
        self._descriptions: tuple[int, dict[str, dict[str, object]]] | None = None
        self._site_ord: dict[bytes, int] = {}
        self._site_blob: dict[int, bytes] = {}
        self._broken: dict[str, SchemaError] = {}  # tracked tables crsync cannot re-adopt
        self._cell_sql: dict[tuple[str, str], str] = {}  # crdt_changes value lookups
        conn.create_function("crsync_pack_pk", -1, _sql_pack_pk, deterministic=True)
        self.read_only = False
        self._seq_clean: tuple[int, int] | None = None  # see versions.renumber_repeated_seqs
        if self._open_read_only():  # nothing below may write
            with contextlib.suppress(sqlite3.Error):
                tracking.create_feed_view(self, conn)  # TEMP: allowed unless query_only forbids it
            return
        with self._write():
            for stmt in _METADATA_DDL:
                conn.execute(stmt)
            conn.execute(
                "INSERT OR IGNORE INTO crsync_meta VALUES ('format_version', ?)", (FORMAT_VERSION,)
            )
            fmt = conn.execute(
                "SELECT value FROM crsync_meta WHERE key = 'format_version'"
            ).fetchone()[0]
            if fmt == 1:
                rebuilt = tracking.migrate_format_1(conn)
                positions.migrate_format_1(conn)
                conn.execute(
                    "UPDATE crsync_meta SET value = ? WHERE key = 'format_version'",
                    (FORMAT_VERSION,),
                )
                log.info("crsync.format.migrated from=1 to=%d tables=%d", FORMAT_VERSION, rebuilt)
                fmt = FORMAT_VERSION
            if fmt != FORMAT_VERSION:
                raise CrsyncError(
                    f"this database uses crsync metadata format {fmt}; this crsync reads "
                    f"format {FORMAT_VERSION}"
                )
            if conn.execute("SELECT 1 FROM crsync_sites WHERE ordinal = 0").fetchone() is None:
                conn.execute(
                    "INSERT INTO crsync_sites (ordinal, site_id) VALUES (0, ?)",
                    (uuid.uuid4().bytes,),
                )
        self._local_site: bytes = self.site_id
        tracking.create_feed_view(self, conn)
        self._check_file_identity()

    def _check_file_identity(self) -> None:
        """Move a copied file to a new site id (see :mod:`crsync.identity`).

        Only reads when the file is the one recorded; writes (record, or reset) in one
        write transaction that checks again, so connections opening a copy together reset it
        once. A read-only connection never writes: it logs and leaves it to the next writer.
        """
        path = self.path
        here = identity.of_file(path) if path else None
        if here is None:
            return  # in memory, temporary, or a file system without file ids
        known = identity.stored(self.conn)
        if known == here:
            return
        if known is not None and known.same_file(here):
            log.info("crsync.file.moved old=%s new=%s", known.path, here.path)
        try:
            with self._write() as conn:
                known = identity.stored(conn)
                copied = known is not None and not known.same_file(here)
                if copied:
                    old, new = self._reset_site_locked(conn)
                identity.record(conn, here)
        except CrsyncError as exc:
            if not _read_only_error(exc):
                raise
            log.warning(
                "crsync.file.identity_unchecked path=%s reason=read-only (a copied file keeps "
                "its site id until opened for writing)",
                path,
            )
            return
        if copied:
            self._after_reset()
            assert known is not None
            log.warning(
                "crsync.site.reset reason=file-copied old_path=%s path=%s old=%s new=%s",
                known.path,
                here.path,
                old.hex(),
                new.hex(),
            )

    @property
    def site_id(self) -> bytes:
        """16-byte id of this database (UUIDv4 layout), persisted in the file; a copy of the
        file takes a new one when opened (:mod:`crsync.identity`).

        Read from the file each time: another connection may have reset it
        (:meth:`reset_site`).
        """
        site: bytes = self.conn.execute(
            "SELECT site_id FROM crsync_sites WHERE ordinal = 0"
        ).fetchone()[0]
        return site

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        """Close the connection if crsync opened it."""
        if self._owns:
            self.conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> str | None:
        """Path of the main database file, or None for an in-memory database."""
        row = self.conn.execute(
            "SELECT file FROM pragma_database_list WHERE name = 'main'"
        ).fetchone()
        return row[0] or None if row else None

    def _no_txn(self, what: str) -> None:
        if self.conn.in_transaction:
            raise CrsyncError(
                f"cannot {what} inside an open transaction on db.conn; commit or roll back first"
            )

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A BEGIN IMMEDIATE transaction; SQLite errors become CrsyncError after rollback."""
        conn = self.conn
        if self.read_only:
            raise ReadOnlyError(_READ_ONLY_MESSAGE)
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise CrsyncError(f"cannot start a write transaction: {exc}") from exc
        try:
            yield conn
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._site_ord.clear()
            self._site_blob.clear()
            if isinstance(exc, sqlite3.Error) and _is_read_only_error(exc):
                raise ReadOnlyError(_READ_ONLY_MESSAGE) from exc
            if isinstance(exc, sqlite3.Error):
                raise CrsyncError(f"SQLite error, nothing was changed: {exc}") from exc
            raise
        else:
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.execute("COMMIT")

    def _refresh(self) -> None:
        """Reload the tracked-table registry if the schema changed, re-adopting tracked tables
        that were rebuilt or altered behind crsync's back (see :mod:`crsync.adoption`).

        Costs one ``PRAGMA schema_version`` read when the schema did not change.

        Raises:
            SchemaError: a tracked table was dropped or renamed, or was changed in a way crsync
                cannot re-adopt (the message names the table and the fix). Raised again on
                every call until the table is fixed or untracked.
        """
        conn = self.conn
        sv = conn.execute("PRAGMA schema_version").fetchone()[0]
        if sv != self._schema_version:
            findings = adoption.inspect(conn)
            if any(f.kind in (adoption.ALTERED, adoption.REBUILT) for f in findings):
                broken = tracking.readopt(self)
                sv = conn.execute("PRAGMA schema_version").fetchone()[0]
            else:
                broken = {
                    f.name: f.error()
                    for f in findings
                    if f.kind in (adoption.RENAMED, adoption.DROPPED)
                }
            tracking.load_registry(self)
            tracking.create_feed_view(self, conn)
            self._broken = broken
            self._schema_version = sv
        if self._broken:
            raise next(iter(self._broken.values()))

    def _site_ordinal(self, site: bytes) -> int:
        o = self._site_ord.get(site)
        if o is not None:
            return o
        if site == self._local_site:
            o = 0
        else:
            row = self.conn.execute(
                "SELECT ordinal FROM crsync_sites WHERE site_id = ?", (site,)
            ).fetchone()
            if row is None:
                row = self.conn.execute(
                    "INSERT INTO crsync_sites (site_id) VALUES (?) RETURNING ordinal", (site,)
                ).fetchone()
            o = int(row[0])
        self._site_ord[site] = o
        self._site_blob[o] = site
        return o

    def _site_of(self, ordinal: int) -> bytes:
        b = self._site_blob.get(ordinal)
        if b is None:
            for o, s in self.conn.execute("SELECT ordinal, site_id FROM crsync_sites"):
                self._site_blob[o] = s
                self._site_ord[s] = o
            b = self._site_blob.get(ordinal)
            if b is None:
                raise CrsyncError(f"metadata refers to unknown site ordinal {ordinal}")
        return b

    # ------------------------------------------------------------------ tracking

    def tracked_tables(self) -> list[str]:
        """Names of the replicated tables.

        Like every read and merge, first re-adopts tables rebuilt or altered outside
        :meth:`migrate` (see docs/guides/migrate-schema.md).

        Raises:
            SchemaError: a tracked table was dropped or renamed, or cannot be re-adopted.
        """
        self._refresh()
        return sorted(self._tracked)

    def capture_sql(self, table: str, *, integer_keys: str | None = None) -> str:
        """The SQL :meth:`track` would install for a table (executes nothing)."""
        info = validate_table(self.conn, table, integer_keys=integer_keys)
        slot_names, existing = tracking.slots_for(self, info)
        return generate(
            info, tracking.slot_map(info, slot_names), len(slot_names), existing
        ).script()

    def track(self, table: str, *, integer_keys: str | None = None) -> None:
        """Make a table replicated: validate it, install capture triggers, record existing rows.

        Idempotent. After a migration of the table (for instance ``ALTER TABLE ... ADD
        COLUMN``), calling it again adopts the new columns and applies changes that were kept
        aside because this database did not have those columns yet.

        Args:
            integer_keys: ``"app-assigned"`` to replicate a table keyed by its rowid (an
                ``INTEGER PRIMARY KEY``): a promise that the app gives every new row an id
                unique across devices (:func:`crsync.new_id`), never lets SQLite pick one.
                Recorded with the table, so later ``track`` and ``migrate`` calls accept it.

        Raises:
            SchemaError: the table cannot converge as declared (the message lists every
                problem; ``.problems`` has them one by one).
        """
        tracking.track(self, table, integer_keys=integer_keys)

    def untrack(self, table: str) -> None:
        """Stop replicating a table: drop its triggers and metadata (the table is untouched).

        Raises:
            NotTrackedError: the table is not tracked.
        """
        tracking.untrack(self, table)

    @contextlib.contextmanager
    def migrate(self, table: str) -> Iterator[sqlite3.Connection]:
        """Change a tracked table's schema safely.

        Inside the block the table's capture triggers are removed, so ``ALTER TABLE`` works
        (SQLite refuses to drop or rename a column a trigger uses); on exit the table is
        tracked again with its new columns, in the same transaction. Existing clocks are kept
        (never reset), and changes kept aside for the new columns are applied. Rows deleted
        or re-keyed inside the block become delete records other devices receive; rows that
        appear get clocks as new rows.

        Example::

            with db.migrate("todos") as conn:
                conn.execute("ALTER TABLE todos ADD COLUMN due TEXT")
        """
        with tracking.migrate(self, table) as conn:
            yield conn

    def _open_version_mark(self, has_meta: bool) -> tuple[int, int] | None:
        """(open version, PRAGMA data_version) if the open version holds no records yet (see
        _renumber_repeated_seqs), from one read snapshot."""
        conn = self.conn
        conn.execute("BEGIN")
        try:
            if not has_meta:
                v = 1  # this connection creates the clock
            else:
                v = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
                for (name,) in conn.execute("SELECT name FROM crsync_tables").fetchall():
                    m = quote_ident(meta_table_name(name))
                    try:
                        if conn.execute(
                            f"SELECT 1 FROM {m} WHERE dbv = ? LIMIT 1", (v,)
                        ).fetchone():
                            return None
                    except sqlite3.Error:
                        return None
            return (int(v), int(conn.execute("PRAGMA data_version").fetchone()[0]))
        finally:
            conn.execute("COMMIT")

    def _open_read_only(self) -> bool:
        """If the connection cannot write (``mode=ro``, ``immutable=1``, ``PRAGMA
        query_only``, a read-only file), check the metadata without writing and return True.

        Raises:
            ReadOnlyError: the file has no crsync metadata (it was never opened read-write
                by crsync), so there is nothing to read.
        """
        conn = self.conn
        has_meta = (
            conn.execute(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN "
                "('crsync_meta', 'crsync_sites', 'crsync_clock', 'crsync_tables', "
                "'crsync_pending', 'crsync_peers')"
            ).fetchone()[0]
            == 6
        )
        read_only = bool(conn.execute("PRAGMA query_only").fetchone()[0])
        if not read_only and not conn.in_transaction:
            # A write statement that changes nothing (or creates what the read-write path
            # creates first anyway): SQLite refuses it on a read-only connection, which
            # BEGIN IMMEDIATE alone does not tell in WAL mode.
            probe = "DELETE FROM crsync_clock WHERE 0" if has_meta else _METADATA_DDL[0]
            try:
                conn.execute(probe)
            except sqlite3.Error as exc:
                if not _is_read_only_error(exc):
                    raise CrsyncError(f"cannot open the database: {exc}") from exc
                read_only = True
            finally:
                if conn.in_transaction:  # opened implicitly (legacy transaction control)
                    conn.execute("ROLLBACK")
        if not read_only:
            if not conn.in_transaction:
                self._seq_clean = self._open_version_mark(has_meta)
            return False
        if not has_meta:
            raise ReadOnlyError(
                "this database is opened read-only and has no crsync metadata yet: open it "
                "read-write once with crsync.connect() (and track its tables) first"
            )
        fmt = conn.execute("SELECT value FROM crsync_meta WHERE key = 'format_version'").fetchone()
        if fmt is None or fmt[0] not in _READABLE_FORMATS:
            raise CrsyncError(
                f"this database uses crsync metadata format {fmt[0] if fmt else None}; this "
                f"crsync reads format {FORMAT_VERSION}"
            )
        self.read_only = True
        self._local_site = self.site_id
        return True

    def schema_fingerprints(self) -> dict[str, str]:
        """Fingerprint of every tracked table (see :func:`crsync.schema_fingerprint`)."""
        self._refresh()
        return {n: fingerprint_of(t.info) for n, t in self._tracked.items()}

    def schema_descriptions(self) -> dict[str, dict[str, object]]:
        """Replicated schema of every tracked table, as plain data (for handshakes)."""
        self._refresh()
        cached = self._descriptions
        if cached is None or cached[0] != self._schema_version:
            # Computed once per schema (the Peer compares it on every push round).
            cached = self._descriptions = (
                self._schema_version,
                {
                    n: {
                        **t.info.describe(),
                        "notnull": sorted(c.name for c in t.info.columns if c.notnull),
                        "integer_key": is_rowid_alias(self.conn, t.info),
                    }
                    for n, t in self._tracked.items()
                },
            )
        return {n: dict(d) for n, d in cached[1].items()}

    # ------------------------------------------------------------------ metadata

    def metadata_stats(self) -> MetadataStats:
        """How much metadata this database keeps: live rows, full tombstones, collected
        (compacted) deletes, the metadata's bytes (measured with ``dbstat`` when SQLite has
        it, else estimated: see :attr:`MetadataStats.metadata_bytes_exact`) and per live row,
        and the relay's horizon as last heard (and when)."""
        self._no_txn("read metadata stats")
        with self._read():
            self._refresh()
            rows, tombstones, collected, estimate = tracking.metadata_counts(self)
            measured = tracking.metadata_bytes(self)
            heard = positions.horizon(self)
        size = estimate if measured is None else measured
        return MetadataStats(
            rows,
            tombstones,
            collected,
            size,
            measured is not None,
            size / rows if rows else None,
            None if heard is None else heard[0],
            None if heard is None else heard[1],
        )

    # ------------------------------------------------------------------ versions

    @property
    def db_version(self) -> int:
        """This database's logical clock: every change so far has a db_version at or below it,
        every later change a higher one (so ``changes(since=db.db_version)`` misses nothing)."""
        self._no_txn("read db_version")
        return versions.seal(self)

    # ------------------------------------------------------------------ change feed

    def changes(self, since: int = 0, exclude_site: bytes | None = None) -> list[Change]:
        """Changes recorded after ``since``, ordered by (db_version, seq).

        Args:
            since: a db_version of this database (0 for everything).
            exclude_site: leave out changes authored by this site (e.g. the requester's own).
        """
        return self.changes_since(since, exclude_site)[1]

    def changes_since(
        self, since: int = 0, exclude_site: bytes | None = None
    ) -> tuple[int, list[Change]]:
        """Like :meth:`changes`, also returning the version to use as the next ``since``."""
        return feed.changes_since(self, since, exclude_site)

    # ------------------------------------------------------------------ merge

    def merge(self, changes: Iterable[Change | Sequence[Any]]) -> int:
        """Apply remote changes atomically, with cr-sqlite's merge rules.

        Changes for a table or column this database does not have are kept aside (never
        executed) and applied once the table is tracked or migrated.

        Args:
            changes: :class:`Change` objects or 9-tuples in ``crsql_changes`` order.

        Returns:
            How many changes won (changed data or metadata here).

        Raises:
            InvalidChangeError: a change is malformed; nothing was applied.
            CrsyncError: SQLite failed; nothing was applied.
        """
        batch = validate_changes(changes)
        self._no_txn("merge changes")
        if not batch:
            return 0
        with self._write() as conn, gc_paused():
            self._refresh()
            try:
                return merge.merge_locked(self, conn, batch)
            except UnicodeEncodeError as exc:  # sqlite3 cannot bind the text: nothing applied
                raise InvalidChangeError(
                    f"a text value or key is not valid Unicode ({exc.reason} at "
                    f"{exc.start}: {exc.object[exc.start : exc.end]!r}); nothing was applied"
                ) from None

    def _sync_site(self) -> None:
        """Drop cached site ordinals if another connection reset the site id."""
        local = self.site_id
        if local != self._local_site:
            self._local_site = local
            self._site_ord.clear()
            self._site_blob.clear()

    def reset_site(self) -> bytes:
        """Give this database a new site id, keeping its data and history.

        Needed when a file is restored from a backup or copied to a second device: two live
        replicas must never share a site id, and a restored file has forgotten writes its old
        identity made after the backup. Existing changes stay attributed to the old id (they
        were made by it); new local writes are attributed to the new one. The next
        :class:`Peer` session pushes the changes of every site once (the request is stored
        in the file), so writes the old id had not pushed yet are not left behind. A Peer
        calls this by itself when the relay has acknowledged more of this site's changes than
        the file holds, and opening a copied file does it too (:mod:`crsync.identity`).

        Returns:
            The new site id.
        """
        self._no_txn("reset the site id")
        with self._write() as conn:
            old, new = self._reset_site_locked(conn)
        self._after_reset()
        log.warning("crsync.site.reset old=%s new=%s", old.hex(), new.hex())
        return new

    def _reset_site_locked(self, conn: sqlite3.Connection) -> tuple[bytes, bytes]:
        """Inside a write transaction: attribute the local changes to the old site id under a
        new ordinal, take a new site id, and ask the next Peer session for a full push (the
        changes of the old id not yet pushed are pushed too). Returns (old, new)."""
        new = uuid.uuid4().bytes
        self._refresh()
        old = self.site_id
        conn.execute("UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (new,))
        ordinal = conn.execute(
            "INSERT INTO crsync_sites (site_id) VALUES (?) RETURNING ordinal", (old,)
        ).fetchone()[0]
        for tr in self._tracked.values():
            conn.execute(f"UPDATE {tr.meta} SET ss = ? WHERE ss = 0", (ordinal,))
            for i in range(tr.nslots):
                s = cell_columns(i)[2]
                conn.execute(f"UPDATE {tr.meta} SET {s} = ? WHERE {s} = 0", (ordinal,))
        identity.mark_full_push(conn)
        return old, new

    def _after_reset(self) -> None:
        self._local_site = self.site_id
        self._site_ord.clear()
        self._site_blob.clear()

    def pending_count(self) -> int:
        """Number of changes kept aside for tables or columns this database does not have."""
        return int(self.conn.execute("SELECT count(*) FROM crsync_pending").fetchone()[0])

    # ------------------------------------------------------------------ set aside

    def merge_setting_aside(self, changes: Iterable[Change | Sequence[Any]]) -> tuple[int, int]:
        """Like :meth:`merge`, but rows this database cannot apply (a constraint of its schema,
        a key SQLite cannot store) are set aside instead of failing the batch; everything else
        is applied atomically. What :class:`crsync.Peer` does with what the relay sends.

        Returns:
            ``(wins, rejected)``: changes that won, and changes set aside (see
            :meth:`rejected_changes`).

        Raises:
            InvalidChangeError: a change is malformed (wrong types): nothing was applied.
            CrsyncError: SQLite failed (locked, disk full...): nothing was applied.
        """
        batch = validate_changes(changes)
        self._no_txn("merge changes")
        if not batch:
            return 0, 0
        with self._write() as conn, gc_paused():
            self._refresh()
            return merge.merge_setting_aside_locked(self, conn, batch)

    def _forget_site_cache(self) -> None:
        self._site_ord.clear()
        self._site_blob.clear()

    def rejected_changes(self, table: str | None = None) -> list[rejected.RejectedChange]:
        """Changes from other devices set aside because this database could not apply them
        (of ``table``, or all), each with the reason and when; oldest first."""
        return rejected.listed(self.conn, table)

    def rejected_count(self) -> int:
        """Number of changes set aside (see :meth:`rejected_changes`)."""
        return len(rejected.listed(self.conn, None))

    def retry_rejected(self, table: str | None = None) -> int:
        """Merge the changes set aside again (of ``table``, or all), for instance after a
        :meth:`migrate` that relaxed the constraint they broke. Those that still cannot be
        applied are set aside again.

        Returns:
            How many were applied this time.
        """
        self._no_txn("retry rejected changes")
        with self._write() as conn, gc_paused():
            self._refresh()
            batch = rejected.take(conn, table)
            if not batch:
                return 0
            _wins, still = merge.merge_setting_aside_locked(self, conn, batch)
        log.info("crsync.rejected.retried changes=%d applied=%d", len(batch), len(batch) - still)
        return len(batch) - still

    def drop_rejected(self, table: str | None = None) -> int:
        """Forget the changes set aside (of ``table``, or all). Returns how many."""
        self._no_txn("drop rejected changes")
        with self._write() as conn:
            n = len(rejected.take(conn, table))
        if n:
            log.warning("crsync.rejected.dropped table=%s changes=%d", table or "*", n)
        return n

    # ------------------------------------------------------------------ live (asyncio or trio)

    def watch(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> LiveQuery:
        """A live query: an async iterator (asyncio or trio) of the query's result, now and
        whenever a table it reads changes (writes by any connection or process on this file,
        merges).

        Example::

            async with db.watch("SELECT id, title FROM todos WHERE done = 0") as live:
                async for rows in live:
                    show(rows)

        A slow reader gets the latest result, never a backlog; equal consecutive results are
        yielded once. See :mod:`crsync.live` and docs/guides/live-queries.md.

        Raises:
            CrsyncError: (when iterated) the database is in memory, or the SQL is invalid or
                does more than read.
        """
        from .live import LiveQuery

        return LiveQuery(self, sql, params)

    def changes_feed(self, tables: Sequence[str] | None = None) -> ChangeFeed:
        """An async iterator (asyncio or trio) of lists of :class:`crsync.live.RowChange`:
        which rows of replicated tables changed, and whether this database wrote them or a
        merge did."""
        from .live import ChangeFeed

        return ChangeFeed(self, tables)

    async def on_change(
        self, table: str | None, callback: Callable[[list[RowChange]], None]
    ) -> ChangeFeed:
        """Call ``callback`` (in the event loop thread that called this, asyncio or trio; it must
        not block) with the rows of ``table`` (None: every replicated table) that change from now
        on. ``close()`` the returned handle to stop."""
        from .live import ChangeFeed

        handle = ChangeFeed(self, None if table is None else [table], callback)
        await handle.start()
        return handle


def _read_only_error(exc: BaseException) -> bool:
    """True if a write failed because the connection or file is read-only."""
    cause = exc.__cause__
    code = getattr(cause, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF == 8:  # SQLITE_READONLY and its extended codes
        return True
    return "readonly" in str(exc) or "read-only" in str(exc)


_READ_ONLY_MESSAGE = (
    "this database is opened read-only (mode=ro, immutable=1, PRAGMA query_only or a "
    "read-only file): reading and the change feed work, but tracking, migrating, merging and "
    "resetting the site id need a read-write connection"
)


def _is_read_only_error(exc: sqlite3.Error) -> bool:
    """True for SQLITE_READONLY and its extended codes."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return bool(code & 0xFF == 8)  # SQLITE_READONLY
    return "readonly" in str(exc)


def _sql_pack_pk(*values: SqlValue) -> bytes:
    return pack_pk(values)


def connect(
    path: str | os.PathLike[str] | sqlite3.Connection,
    *,
    busy_timeout_ms: int = 10_000,
    check_same_thread: bool = True,
) -> Database:
    """Open (or create) a SQLite database for replication.

    The connection is in autocommit mode (``isolation_level=None``): each statement commits
    unless you open a transaction with ``BEGIN``. The file is switched to WAL journal mode so
    other connections and processes can read while one writes.

    A read-only open (``"file:app.db?mode=ro"``, ``immutable=1``, ``PRAGMA query_only``, a
    file without write permission, or such a connection passed in) reads and serves the change
    feed without writing anything: :meth:`Database.changes`, ``changes_since``, ``db_version``,
    ``tracked_tables`` and ``schema_fingerprints`` work; tracking, migrating, merging and
    ``reset_site`` raise :class:`crsync.ReadOnlyError`. Such a reader cannot *seal* the open
    version (see :mod:`crsync.database`), so it reports changes up to the last sealed one:
    writes of the open version appear once a read-write connection reads the feed.

    Args:
        path: a file path, a ``file:`` URI, ``":memory:"``, or an existing
            ``sqlite3.Connection`` to wrap.
        busy_timeout_ms: how long a write waits for another writer's lock.
        check_same_thread: passed to :func:`sqlite3.connect`.
    """
    if isinstance(path, sqlite3.Connection):
        return Database(path, owns_connection=False)
    target = os.fspath(path)
    uri = target.startswith("file:")
    if target != ":memory:" and not uri:
        parent = Path(target).parent
        if not parent.exists():
            raise CrsyncError(f"cannot open {target}: directory {parent} does not exist")
    try:
        conn = sqlite3.connect(
            target, isolation_level=None, check_same_thread=check_same_thread, uri=uri
        )
    except sqlite3.Error as exc:
        raise CrsyncError(f"cannot open {target}: {exc}") from exc
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        if target != ":memory:":
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            except sqlite3.Error as exc:
                if not _is_read_only_error(exc):
                    raise
                # read-only: keep the file's journal mode (Database sees it is read-only)
        return Database(conn)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise CrsyncError(f"cannot open {target}: {exc}") from exc
        raise
