"""Tracking: which tables crsync replicates, and their per-table metadata.

The storage API for crsync's own CLI and :func:`crsync.trigger_sql`: functions that read the
tracked-table registry (``crsync_tables``) and the per-table metadata (``<table>__crsync``),
so that no module outside storage runs SQL on them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import attrs

from . import adoption, merge
from .change import validate_changes
from .errors import CrsyncError, NotTrackedError, SchemaError
from .pack import SqlValue
from .schema import (
    TableInfo,
    affinity,
    fingerprint_of,
    quote_ident,
    record_integer_keys,
    table_info,
    validate_table,
)
from .triggers import (
    DBV_INDEX_WHERE,
    SEQ_STEP,
    cell_columns,
    dbv_index_name,
    generate,
    meta_table_name,
    seq_offset,
    seq_units,
    trigger_names,
)

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger(__name__)


@attrs.define
class Tracked:
    """In-memory description of one tracked table (``<table>__crsync`` metadata) and its
    prepared SQL."""

    info: TableInfo
    slots: dict[str, int]  # current column -> slot
    nslots: int
    npk: int
    meta: str  # quoted metadata table
    read_sql: str
    delete_sql: str
    meta_write_sql: str
    pk_affinity: tuple[str, ...]
    defaults: dict[str, SqlValue] | None = None
    upserts: dict[tuple[str, ...], str] = attrs.Factory(dict)

    def cell_layout(self) -> list[tuple[str, int, int]]:
        """Where each current column's cell sits in a row of ``read_sql``
        (key columns, ``cl, sd, ss, sq, dbv``, four clock fields per current column, then the
        current values): ``(column, index of its col_version, index of its value)``, in the
        table's column order."""
        names = [c.name for c in self.info.columns if c.name in self.slots]
        cbase = self.npk + 5
        vbase = cbase + 4 * len(names)
        return [(name, cbase + 4 * j, vbase + j) for j, name in enumerate(names)]


def capture_script(conn: sqlite3.Connection, table: str, *, integer_keys: str | None) -> str:
    """The SQL that tracking ``table`` installs (metadata table and triggers); executes
    nothing. Slots already recorded for the table (it is tracked) are kept.

    Raises:
        SchemaError: the table cannot be replicated as declared.
    """
    row = None
    try:
        row = conn.execute("SELECT slots FROM crsync_tables WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:
        row = None  # crsync never touched this database
    info = validate_table(conn, table, integer_keys=integer_keys)
    if row is None:
        names = list(info.column_names)
        existing = 0
    else:
        names = json.loads(row[0])
        existing = len(names)
        names += [c for c in info.column_names if c not in names]
    slots = {c: names.index(c) for c in info.column_names}
    return generate(info, slots, len(names), existing).script()


def tombstone_count(db: Database, table: str) -> int:
    """How many rows of the tracked ``table`` are deleted (kept as tombstones)."""
    meta = quote_ident(meta_table_name(table))
    return int(db.conn.execute(f"SELECT count(*) FROM {meta} WHERE cl % 2 = 0").fetchone()[0])


def metadata_bytes(db: Database) -> int | None:
    """Bytes of the file used by crsync's metadata, or None if SQLite cannot tell (no
    ``dbstat``)."""
    try:
        n = db.conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name LIKE '%__crsync%' OR name LIKE 'crsync_%'"
        ).fetchone()[0]
    except sqlite3.Error:
        return None
    return None if n is None else int(n)


def migrate_format_1(conn: sqlite3.Connection) -> int:
    """Bring the metadata tables of a format-1 file to format 2: ``dbv`` nullable (a
    compacted tombstone has none) and its index partial (``WHERE dbv IS NOT NULL``). SQLite
    cannot drop a NOT NULL constraint in place, so each metadata table is rebuilt (copied to
    a new table that takes its name); the capture triggers name it and keep working. Runs
    inside the caller's write transaction. Returns how many tables were rebuilt."""
    legacy = conn.execute("PRAGMA legacy_alter_table").fetchone()[0]
    # Legacy renaming leaves the triggers' text alone (they name the metadata table, which
    # is missing between the DROP and the RENAME; the modern rename would refuse them).
    conn.execute("PRAGMA legacy_alter_table = ON")
    n = 0
    try:
        for (name,) in conn.execute("SELECT name FROM crsync_tables").fetchall():
            m = meta_table_name(name)
            row = conn.execute(
                "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?", (m,)
            ).fetchone()
            if row is None or "dbv INTEGER NOT NULL" not in row[0]:
                continue
            tmp = m + "_format2"
            head = f"CREATE TABLE {quote_ident(m)}"
            sql: str = row[0]
            if not sql.startswith(head):
                raise CrsyncError(f"cannot migrate the metadata table {m!r}: unexpected DDL")
            sql = "CREATE TABLE " + quote_ident(tmp) + sql[len(head) :]
            conn.execute(sql.replace("dbv INTEGER NOT NULL", "dbv INTEGER", 1))
            conn.execute(f"INSERT INTO {quote_ident(tmp)} SELECT * FROM {quote_ident(m)}")
            conn.execute(f"DROP TABLE {quote_ident(m)}")
            conn.execute(f"ALTER TABLE {quote_ident(tmp)} RENAME TO {quote_ident(m)}")
            conn.execute(
                f"CREATE INDEX {quote_ident(dbv_index_name(name))} ON {quote_ident(m)} (dbv) "
                f"WHERE {DBV_INDEX_WHERE}"
            )
            n += 1
    finally:
        conn.execute(f"PRAGMA legacy_alter_table = {int(legacy)}")
    return n


def metadata_counts(db: Database) -> tuple[int, int, int, int]:
    """``(rows, tombstones, collected, estimated_bytes)`` over every tracked table's metadata:
    live rows (odd ``cl``), tombstones with their clock (even ``cl``, ``dbv`` set), collected
    records (compacted: ``dbv`` NULL), and an estimate of the metadata tables' bytes (the
    stored length of each row's fields, one byte of header per field, plus the ``dbv`` index
    entries), for SQLite builds without ``dbstat``."""
    rows = tombstones = collected = estimate = 0
    conn = db.conn
    for name in db._tracked:
        m = quote_ident(meta_table_name(name))
        cols = [r[1] for r in conn.execute(f"PRAGMA table_info({m})")]
        width = " + ".join(f"coalesce(length({quote_ident(c)}), 0)" for c in cols)
        keys = " + ".join(
            f"coalesce(length({quote_ident(c)}), 0)" for c in cols if c.startswith("p")
        )
        live, dead, gone, size = conn.execute(
            f"SELECT coalesce(sum(cl % 2 = 1), 0), "
            f"coalesce(sum(cl % 2 = 0 AND dbv IS NOT NULL), 0), "
            f"coalesce(sum(dbv IS NULL), 0), "
            f"coalesce(sum({width} + {len(cols)} + "
            f"CASE WHEN dbv IS NULL THEN 0 ELSE {keys} + 8 END), 0) FROM {m}"
        ).fetchone()
        rows += live
        tombstones += dead
        collected += gone
        estimate += size
    return int(rows), int(tombstones), int(collected), int(estimate)


def load_registry(db: Database) -> None:
    tracked: dict[str, Tracked] = {}
    for name, slots_json in db.conn.execute("SELECT name, slots FROM crsync_tables").fetchall():
        slot_names: list[str] = json.loads(slots_json)
        try:
            info = table_info(db.conn, name)
        except SchemaError:
            continue  # dropped or renamed: reported by _refresh
        tracked[name] = prepare(db, info, slot_names)
    db._tracked = tracked


def readopt(db: Database) -> dict[str, SchemaError]:
    """Re-adopt tracked tables whose capture triggers are gone or whose shape changed,
    and merge the changes kept aside for columns they gained.

    Runs in a write transaction of its own, or in a savepoint of the caller's (a merge).
    Returns the errors of the tables that cannot be re-adopted.
    """
    conn = db.conn
    outer = conn.in_transaction
    readopted: list[str] = []
    broken: dict[str, SchemaError] = {}
    try:
        conn.execute("SAVEPOINT crsync_readopt" if outer else "BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise CrsyncError(f"cannot start a write transaction: {exc}") from exc
    try:
        for f in adoption.inspect(conn):  # again, now that this connection may write
            if f.kind in (adoption.RENAMED, adoption.DROPPED):
                broken[f.name] = f.error()
                continue
            if f.kind == adoption.OK:
                continue
            conn.execute("SAVEPOINT crsync_readopt_one")
            try:
                info = validate_table(conn, f.name)
                done = adopt_locked(db, conn, info, f.kind)
            except SchemaError as exc:
                conn.execute("ROLLBACK TO crsync_readopt_one")
                broken[f.name] = SchemaError(
                    f.name,
                    f"was changed outside migrate(db) and cannot be re-adopted, so its "
                    f"writes are not captured: {exc.problem}. Undo the change, or stop "
                    f"replicating it with untrack(db, {f.name!r})",
                )
                log.error("crsync.table.broken table=%s reason=%s", f.name, exc.problem)
            else:
                readopted.append(f.name)
                log.warning(
                    "crsync.table.readopted table=%s how=%s deleted=%d recreated=%d "
                    "restamped=%d new=%d",
                    f.name,
                    f.kind,
                    *(
                        (done.deleted, done.recreated, done.restamped, done.new)
                        if done
                        else (0, 0, 0, 0)
                    ),
                )
            conn.execute("RELEASE crsync_readopt_one")
        if readopted:
            load_registry(db)
            for name in readopted:
                merge_pending_locked(db, conn, name)
    except BaseException as exc:
        if outer:
            conn.execute("ROLLBACK TO crsync_readopt")
            conn.execute("RELEASE crsync_readopt")
        elif conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise CrsyncError(f"SQLite error while re-adopting tables: {exc}") from exc
        raise
    conn.execute("RELEASE crsync_readopt" if outer else "COMMIT")
    return broken


def merge_pending_locked(db: Database, conn: sqlite3.Connection, table: str) -> int:
    """Merge the changes kept aside for a table, inside the caller's write transaction
    (those that still do not fit are kept aside again)."""
    rows = conn.execute(
        "SELECT tbl, pk, cid, val, col_version, db_version, site_id, cl, seq "
        "FROM crsync_pending WHERE tbl = ?",
        (table,),
    ).fetchall()
    if not rows:
        return 0
    conn.execute("DELETE FROM crsync_pending WHERE tbl = ?", (table,))
    batch = merge.applicable(db, table, validate_changes(rows))
    # Rows that still cannot be applied here (a constraint of this schema) are set aside
    # with their reason: they must never make track() or migrate() fail.
    n, rejected_n = merge.merge_setting_aside_locked(db, conn, batch)
    log.info(
        "crsync.pending.applied table=%s changes=%d won=%d set_aside=%d",
        table,
        len(rows),
        n,
        rejected_n,
    )
    return n


def adopt_locked(
    db: Database, conn: sqlite3.Connection, info: TableInfo, how: str
) -> adoption.Reconciled | None:
    """(Re)install the capture of an already tracked table and bring its metadata up to
    date with its rows, inside the caller's write transaction.

    ``how``: ``adoption.ALTERED`` (the triggers stayed in place: only cells of new columns
    need clocks), ``adoption.REBUILT`` (the triggers were gone: rows are reconciled and
    every live cell re-stamped, see :func:`crsync.adoption.reconcile`) or ``adoption.MIGRATE``
    (crsync removed the triggers itself: rows gone become deletes, rows back are
    re-created, clocks of the others are kept).

    Raises:
        SchemaError: the primary key changed.
    """
    slot_names, existing = slots_for(db, info)
    slots = slot_map(info, slot_names)
    nslots = len(slot_names)
    cap = generate(info, slots, nslots, existing)
    add = adoption.missing_slot_columns(conn, info.name, nslots)
    for stmt in cap.meta_table + add + cap.drop_triggers + cap.create_triggers:
        conn.execute(stmt)
    done = None
    if how != adoption.REBUILT:
        backfill(db, info, slots, nslots, new_from=existing)
    if how != adoption.ALTERED:
        metas = [
            meta_table_name(n)
            for (n,) in conn.execute(
                "SELECT name FROM crsync_tables WHERE name || '__crsync' IN "
                "(SELECT name FROM sqlite_schema WHERE type = 'table')"
            )
        ]
        version = adoption.fresh_version(conn, metas)
        defaults = {c.name: merge.eval_default(db, c.default) for c in info.columns}
        done, _ = adoption.reconcile(
            conn, info, slots, nslots, defaults, version, 0, restamp=how == adoption.REBUILT
        )
        if done.total:
            adoption.seal_after(conn, version)
    conn.execute(
        "UPDATE crsync_tables SET slots = ?, fingerprint = ? WHERE name = ?",
        (json.dumps(slot_names), fingerprint_of(info), info.name),
    )
    return done


def prepare(db: Database, info: TableInfo, slot_names: list[str]) -> Tracked:
    q = quote_ident
    slots = {c.name: slot_names.index(c.name) for c in info.columns if c.name in slot_names}
    npk = len(info.pk)
    m = q(meta_table_name(info.name))
    t = q(info.name)
    cur = [(c.name, slots[c.name]) for c in info.columns if c.name in slots]
    cell_sel = ", ".join(f"m.{c}" for _, i in cur for c in cell_columns(i))
    val_sel = ", ".join(f"b.{q(n)}" for n, _ in cur)
    pcols = [f"p{j}" for j in range(npk)]
    join = " AND ".join(f"b.{q(c.name)} = m.p{j}" for j, c in enumerate(info.pk))
    head = ", ".join([*(f"m.{p}" for p in pcols), "m.cl", "m.sd", "m.ss", "m.sq", "m.dbv"])
    sel = ", ".join(x for x in (head, cell_sel, val_sel, f"b.{q(info.pk[0].name)}") if x)
    read_sql = (
        f"SELECT {sel} FROM {m} AS m LEFT JOIN {t} AS b ON {join} WHERE m.dbv > ?"
    )
    delete_sql = f"DELETE FROM {t} WHERE " + " AND ".join(f"{q(c.name)} = ?" for c in info.pk)
    all_cells = [c for i in range(len(slot_names)) for c in cell_columns(i)]
    mcols = [*pcols, "cl", "sd", "ss", "sq", "dbv", *all_cells]
    meta_write_sql = (
        f"INSERT OR REPLACE INTO {m} ({', '.join(mcols)}) VALUES ({', '.join('?' * len(mcols))})"
    )
    return Tracked(
        info=info,
        slots=slots,
        nslots=len(slot_names),
        npk=npk,
        meta=m,
        read_sql=read_sql,
        delete_sql=delete_sql,
        meta_write_sql=meta_write_sql,
        pk_affinity=tuple(affinity(c.decltype) for c in info.pk),
    )


def slots_for(db: Database, info: TableInfo) -> tuple[list[str], int]:
    row = db.conn.execute(
        "SELECT slots, pk FROM crsync_tables WHERE name = ?", (info.name,)
    ).fetchone()
    if row is None:
        return list(info.column_names), 0
    slot_names: list[str] = json.loads(row[0])
    old_pk = json.loads(row[1])
    if list(info.pk_names) != old_pk:
        raise SchemaError(
            info.name,
            f"primary key changed from {old_pk} to {list(info.pk_names)}; every row "
            "identity changed, so untrack the table and track it again",
        )
    existing = len(slot_names)
    slot_names += [c for c in info.column_names if c not in slot_names]
    return slot_names, existing


def slot_map(info: TableInfo, slot_names: list[str]) -> dict[str, int]:
    return {c: slot_names.index(c) for c in info.column_names}


def track(db: Database, table: str, *, integer_keys: str | None = None) -> None:
    """The body of :meth:`Database.track`."""
    db._no_txn("track a table")
    with db._write() as conn:
        info = validate_table(conn, table, integer_keys=integer_keys)
        record_integer_keys(conn, info.name, integer_keys)
        fp = fingerprint_of(info)
        row = conn.execute(
            "SELECT fingerprint FROM crsync_tables WHERE name = ?", (info.name,)
        ).fetchone()
        have = {
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'trigger' AND tbl_name = ?",
                (info.name,),
            )
        }
        up_to_date = row is not None and row[0] == fp and adoption.expected_triggers(info) <= have
        if not up_to_date and row is not None:
            # Tracked already: altered (ADD COLUMN) or rebuilt (triggers gone) outside
            # migrate(db); re-adopt it as _refresh would.
            rebuilt = adoption.triggers_gone(info.name, have)
            adopt_locked(db, conn, info, adoption.REBUILT if rebuilt else adoption.ALTERED)
            create_feed_view(db, conn)
            log.info("crsync.track.readopt table=%s rebuilt=%s", info.name, rebuilt)
        elif not up_to_date:
            slot_names, existing = slots_for(db, info)
            slots = slot_map(info, slot_names)
            cap = generate(info, slots, len(slot_names), existing)
            stmts = cap.meta_table + cap.add_slots + cap.drop_triggers + cap.create_triggers
            for stmt in stmts:
                conn.execute(stmt)
            backfill(db, info, slots, len(slot_names), new_from=None)
            conn.execute(
                "INSERT OR REPLACE INTO crsync_tables (name, slots, pk, fingerprint) "
                "VALUES (?, ?, ?, ?)",
                (info.name, json.dumps(slot_names), json.dumps(list(info.pk_names)), fp),
            )
            create_feed_view(db, conn)
            log.info("crsync.track table=%s columns=%d", info.name, len(slots))
    if not up_to_date:
        db._schema_version = -1
    # Also when nothing changed: kept-aside changes may have become applicable (for
    # instance when a previous run stopped between a migration and applying them).
    apply_pending(db, info.name)


def _drop_triggers(conn: sqlite3.Connection, table: str) -> str:
    """Drop the capture triggers of the tracked ``table``; return its name as tracked.

    Raises:
        NotTrackedError: the table is not tracked.
    """
    row = conn.execute(
        "SELECT name FROM crsync_tables WHERE name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    if row is None:
        raise NotTrackedError(f"table {table!r} is not tracked")
    name: str = row[0]
    for n in trigger_names(name):
        conn.execute(f"DROP TRIGGER IF EXISTS {quote_ident(n)}")
    return name


def untrack(db: Database, table: str) -> None:
    """The body of :meth:`Database.untrack`."""
    db._no_txn("untrack a table")
    with db._write() as conn:
        name = _drop_triggers(conn, table)
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(meta_table_name(name))}")
        conn.execute("DELETE FROM crsync_tables WHERE name = ?", (name,))
        create_feed_view(db, conn)
    db._schema_version = -1


@contextlib.contextmanager
def migrate(db: Database, table: str) -> Iterator[sqlite3.Connection]:
    """The body of :meth:`Database.migrate`."""
    db._no_txn("migrate a table")
    with db._write() as conn:
        name = _drop_triggers(conn, table)
        conn.execute("UPDATE crsync_tables SET fingerprint = '' WHERE name = ?", (name,))
        yield conn
        info = validate_table(conn, name)
        adopt_locked(db, conn, info, adoption.MIGRATE)
        create_feed_view(db, conn)
    db._schema_version = -1
    apply_pending(db, name)


def backfill(
    db: Database, info: TableInfo, slots: dict[str, int], nslots: int, new_from: int | None
) -> None:
    """Give clocks to rows that have none (existing data, or rows written untracked).

    Seqs follow the triggers' numbering (crsync.triggers): the ``n``-th row written by one
    statement gets base ``(total_changes() + n * units) * SEQ_STEP``; the statement adds
    ``n + 1`` to total_changes() and, for a table wider than one step, ``units - 1``
    updates of the same rows add the rest, so later writes on this connection get more.
    """
    q = quote_ident
    conn = db.conn
    m = q(meta_table_name(info.name))
    t = q(info.name)
    v = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
    npk = len(info.pk)
    pk_only = not info.columns
    cols = [f"p{j}" for j in range(npk)] + ["cl", "sd", "ss", "sq", "dbv"]
    units = seq_units(len(info.columns))
    base = f"(total_changes() + (b.crsync_rn - 1) * {units}) * {SEQ_STEP}"
    vals = [f"b.k{j}" for j in range(npk)] + ["1"]
    vals += [str(v), "0", base] if pk_only else ["NULL", "NULL", "NULL"]
    vals.append(str(v))
    for j, c in enumerate(info.columns):
        cols += list(cell_columns(slots[c.name]))
        vals += ["1", str(v), "0", f"{base} + {seq_offset(j)}"]
    keys = ", ".join(f"b.{q(c.name)} AS k{j}" for j, c in enumerate(info.pk))
    missing = " AND ".join(f"x.p{j} = +b.{q(c.name)}" for j, c in enumerate(info.pk))
    conn.execute(
        f"INSERT INTO {m} ({', '.join(cols)}) SELECT {', '.join(vals)} FROM "
        f"(SELECT {keys}, row_number() OVER () AS crsync_rn FROM {t} AS b "
        f"WHERE NOT EXISTS (SELECT 1 FROM {m} AS x WHERE {missing})) AS b"
    )
    pad_rows = f"UPDATE {m} SET dbv = dbv WHERE dbv = ?"  # counted by total_changes()
    for _ in range(units - 1):
        conn.execute(pad_rows, (v,))
    # Cells of columns added since the last track: a value other than the column default
    # was written while no trigger watched the column; give it a clock.
    if new_from is not None:
        join = " AND ".join(f"b.{q(c.name)} = m.p{j}" for j, c in enumerate(info.pk))
        mkeys = ", ".join(f"p{j}" for j in range(npk))
        for j, c in enumerate(info.columns):
            i = slots[c.name]
            if i < new_from:
                continue
            dflt = merge.eval_default(db, c.default)
            vv, dd, ss, qq = cell_columns(i)
            conn.execute(
                f"UPDATE {m} AS m SET {vv} = 1, {dd} = ?1, {ss} = 0, "
                f"{qq} = (total_changes() + (r.crsync_rn - 1) * {units}) * {SEQ_STEP} + "
                f"{seq_offset(j)}, dbv = ?1 FROM (SELECT {mkeys}, row_number() OVER () "
                f"AS crsync_rn FROM {m} AS m WHERE {vv} IS NULL AND cl % 2 = 1 AND "
                f"EXISTS (SELECT 1 FROM {t} AS b WHERE {join} AND b.{q(c.name)} IS NOT ?2)"
                f") AS r WHERE " + " AND ".join(f"m.p{k} = r.p{k}" for k in range(npk)),
                (v, dflt),
            )
            for _ in range(units - 1):
                conn.execute(pad_rows, (v,))


def create_feed_view(db: Database, conn: sqlite3.Connection) -> None:
    """(Re)create ``crdt_changes``: the change feed, queryable in SQL on this connection.

    A TEMP view of crsync's connection that reads only crsync's own tables. A view naming
    the app's tables, even a TEMP one, makes SQLite refuse the app's ALTER TABLE on this
    connection (RENAME and DROP COLUMN check every view), and a view kept in the file makes
    every tool's migration fail. Cell values come from ``crsync_cell(table, column,
    pk...)``, ``pk`` from ``crsync_pack_pk``: both are registered on crsync's connections.
    """
    db._cell_sql.clear()
    conn.create_function("crsync_cell", -1, _cell_reader(db))
    with contextlib.suppress(sqlite3.Error):
        conn.execute("DROP VIEW IF EXISTS temp.crdt_changes")
    q = quote_ident
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_schema WHERE type='table'")}
    site = "(SELECT site_id FROM main.crsync_sites WHERE ordinal = {})"
    parts = []
    for name, slots_json in conn.execute("SELECT name, slots FROM crsync_tables").fetchall():
        if meta_table_name(name) not in tables:
            continue
        try:
            info = table_info(conn, name)
        except SchemaError:
            continue  # dropped or renamed: reported by _refresh
        slot_names = json.loads(slots_json)
        m = "main." + q(meta_table_name(name))
        lit = _sql_text(name)
        keys = ", ".join(f"m.p{j}" for j in range(len(info.pk)))
        pk = f"crsync_pack_pk({keys})"
        parts.append(
            f"SELECT {lit} AS \"table\", {pk} AS pk, '-1' AS cid, NULL AS val, "
            f"m.cl AS col_version, m.sd AS db_version, {site.format('m.ss')} AS site_id, "
            f"m.cl AS cl, m.sq AS seq FROM {m} AS m WHERE m.sd IS NOT NULL"
        )
        for c in info.columns:
            if c.name not in slot_names:
                continue
            v, d, s, qq = cell_columns(slot_names.index(c.name))
            clit = _sql_text(c.name)
            parts.append(
                f"SELECT {lit}, {pk}, {clit}, crsync_cell({lit}, {clit}, {keys}), m.{v}, "
                f"m.{d}, {site.format('m.' + s)}, m.cl, m.{qq} FROM {m} AS m "
                f"WHERE m.{d} IS NOT NULL"
            )
    if not parts:
        parts.append(
            'SELECT NULL AS "table", NULL AS pk, NULL AS cid, NULL AS val, '
            "NULL AS col_version, NULL AS db_version, NULL AS site_id, NULL AS cl, "
            "NULL AS seq WHERE 0"
        )
    try:
        conn.execute("CREATE TEMP VIEW crdt_changes AS " + " UNION ALL ".join(parts))
    except sqlite3.Error as exc:  # e.g. PRAGMA query_only: the feed API still works
        log.warning("crsync.feed_view.unavailable reason=%s", exc)


def read_cell(db: Database, table: str, column: str, key: tuple[SqlValue, ...]) -> SqlValue:
    """Current value of one cell of a tracked table (NULL if the row or table is gone)."""
    sql = db._cell_sql.get((table, column))
    q = quote_ident
    try:
        if sql is None:
            row = db.conn.execute(
                "SELECT pk FROM crsync_tables WHERE name = ?", (table,)
            ).fetchone()
            if row is None:
                return None
            where = " AND ".join(f"{q(c)} = ?" for c in json.loads(row[0]))
            sql = f"SELECT {q(column)} FROM main.{q(table)} WHERE {where}"
            db._cell_sql[(table, column)] = sql
        found = db.conn.execute(sql, key).fetchone()
    except sqlite3.Error:
        return None
    return None if found is None else found[0]


def apply_pending(db: Database, table: str) -> int:
    """Merge changes kept aside for a table that now exists or has new columns."""
    with db._write() as conn:
        db._refresh()
        return merge_pending_locked(db, conn, table)


def _sql_text(text: str) -> str:
    """An SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _cell_reader(db: Database) -> Callable[..., SqlValue]:
    """The ``crsync_cell(table, column, pk...)`` SQL function of a Database's connection."""
    ref = weakref.ref(db)

    def crsync_cell(table: str, column: str, *key: SqlValue) -> SqlValue:
        d = ref()
        return None if d is None else read_cell(d, table, column, key)

    return crsync_cell
