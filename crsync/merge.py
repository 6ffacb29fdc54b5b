"""The merge, storage side: applying remote changes to the tables and their metadata.

The rules themselves are :func:`crsync.merge_rules.apply_change` (pure, shared with the
relay). This module groups a batch into rows per table, brings incoming keys to the form
SQLite stores, reads what decides the stored rows' changes (a row whose changes all lose,
as in a re-merge, stops there), applies the rules to the others and writes the rows that
changed; rows never seen that arrive as plain inserts are written column by column. Changes
for tables or columns this database does not have are kept aside in ``crsync_pending``.
Called inside the caller's write transaction (``*_locked``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import sqlite3
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from . import rejected
from .change import SENTINEL, Change
from .errors import InvalidChangeError, PackError
from .merge_rules import MERGE_VERSION, Clock, RowState, all_fresh_cells, apply_change
from .pack import SqlValue, small_int_key, unpack_pk
from .schema import quote_ident
from .values import compare_values

if TYPE_CHECKING:
    from .database import Database
    from .tracking import Tracked

log = logging.getLogger(__name__)


def _natural(aff: str, v: SqlValue) -> bool:
    """True if SQLite's affinity ``aff`` stores ``v`` unchanged."""
    if v is None or isinstance(v, bytes) or aff == "BLOB":
        return True
    if aff in ("INTEGER", "NUMERIC"):
        return isinstance(v, int)
    if aff == "REAL":
        return isinstance(v, float)
    return isinstance(v, str)


_NATURAL_TYPES: dict[str, frozenset[type]] = {
    "INTEGER": frozenset((int, bytes, type(None))),
    "NUMERIC": frozenset((int, bytes, type(None))),
    "REAL": frozenset((float, bytes, type(None))),
    "TEXT": frozenset((str, bytes, type(None))),
}
"""The value types :func:`_natural` accepts per affinity (BLOB: every type)."""


def _decode_key(table: str, blob: bytes) -> tuple[SqlValue, ...]:
    """Unpack an incoming pk, refusing blobs that can never name a row."""
    try:
        key = unpack_pk(blob)
    except PackError as exc:
        raise PackError(f"table {table!r}, pk {blob.hex()}: {exc}") from None
    if not key:
        raise InvalidChangeError(f"table {table!r}: pk {blob.hex()} has no values")
    if None in key:
        raise InvalidChangeError(f"table {table!r}: pk {blob.hex()} contains NULL")
    return key


def _key_of(table: str, blob: bytes) -> tuple[SqlValue, ...]:
    """:func:`_decode_key`, with a fast path for the common one-integer key."""
    k = small_int_key(blob)
    return (k,) if k is not None else _decode_key(table, blob)


_CID = operator.itemgetter(2)
_VAL = operator.itemgetter(3)
_CV = operator.itemgetter(4)
_DBV = operator.itemgetter(5)
_SITE = operator.itemgetter(6)
_CL = operator.itemgetter(7)
_SEQ = operator.itemgetter(8)


def merge_locked(db: Database, conn: sqlite3.Connection, batch: list[Change]) -> int:
    """Inside a write transaction: merge a validated batch; returns how many changes won."""
    db._sync_site()
    open_v = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
    # 1. Sort into rows per table (decoding every pk) before writing anything.
    by_table: dict[str, dict[bytes, list[Change]]] = {}
    pending: list[Change] = []
    tracked = db._tracked
    last: str | None = None
    tr: Tracked | None = None
    groups: dict[bytes, list[Change]] = {}
    for c in batch:
        table = c[0]
        if table != last:
            last = table
            tr = tracked.get(table)
            if tr is not None:
                groups = by_table.setdefault(table, {})
        cid = c[2]
        if tr is None or (cid != SENTINEL and cid not in tr.slots):
            pending.append(c)
            continue
        group = groups.get(c[1])
        if group is None:
            groups[c[1]] = [c]
        else:
            group.append(c)
    for c in pending:  # kept aside, but must be applicable once the table exists
        _decode_key(c.table, c.pk)
    per_table: dict[str, dict[tuple[SqlValue, ...], list[Change]]] = {}
    for table, blobs in by_table.items():
        npk = tracked[table].npk
        rows: dict[tuple[SqlValue, ...], list[Change]] = {}
        for blob, group in blobs.items():
            key = _key_of(table, blob)
            if len(key) != npk:
                raise InvalidChangeError(
                    f"table {table!r}: pk {blob.hex()} has {len(key)} values, the table's "
                    f"primary key has {npk} columns"
                )
            if key in rows:  # two encodings of one key (e.g. 1 and 1.0)
                rows[key] += group
            else:
                rows[key] = group
        if rows:
            per_table[table] = rows
    conn.execute("UPDATE crsync_clock SET merging = 1")
    wins = 0
    top = open_v
    written: list[tuple[Tracked, tuple[SqlValue, ...], RowState]] = []
    fresh: list[FreshRows] = []
    for tname, rows in per_table.items():
        tr = db._tracked[tname]
        rows = canonical_keys(db, tr, rows)
        reader = _StateReader(db, tr)
        stored = reader.deciding(list(rows))
        row_defaults = defaults(db, tr)
        npk = tr.npk
        n = len(reader.names)
        where = {name: (npk + 1 + j, npk + 1 + n + j) for j, name in enumerate(reader.names)}
        slow: list[tuple[tuple[SqlValue, ...], list[Change], Any]] = []
        unseen: dict[tuple[str, ...], tuple[list[tuple[SqlValue, ...]], list[list[Change]]]] = {}
        for key, changes in rows.items():
            row = stored.get(key)
            if row is None:  # never seen: grouped by the columns it brings, in their order
                cids = tuple(map(_CID, changes))
                same = unseen.get(cids)
                if same is None:
                    unseen[cids] = ([key], [changes])
                else:
                    same[0].append(key)
                    same[1].append(changes)
                continue
            # Rules 1-4 of crsync.merge_rules on the stored row as read, without a RowState:
            # a change older than the row, a delete or create the row already has, or a cell
            # whose clock (then value) does not beat the stored one loses and changes nothing.
            # A row whose changes all lose needs no more work (a re-merge); any other row
            # goes through apply_change from its stored state.
            local_cl = row[npk]
            for c in changes:
                ccl = c[7]
                if ccl < local_cl:
                    continue
                if ccl != local_cl:
                    break
                cid = c[2]
                if ccl % 2 == 0 or cid == SENTINEL:
                    continue
                iv, ival = where[cid]
                lv = row[iv]
                if lv is None:
                    break
                cv = c[4]
                if cv != lv:
                    if cv < lv:
                        continue
                    break
                v = c[3]
                local = row[ival]
                if type(v) is type(local):  # one storage class: Python's order is its order
                    if v is None or v <= local:  # type: ignore[operator]
                        continue
                    break
                if compare_values(v, local) > 0:
                    break
            else:
                continue
            slow.append((key, changes, row))
        for cids, (keys, row_changes) in unseen.items():
            # Rows this database never saw, arriving as cells of their first life (each
            # cell of another column, causal length 1): every cell wins (see
            # all_fresh_cells), written column by column without a RowState.
            if SENTINEL in cids or len(set(cids)) != len(cids):
                slow += [(k, g, None) for k, g in zip(keys, row_changes, strict=True)]
                continue
            flat = list(itertools.chain.from_iterable(row_changes))
            if max(map(_CL, flat)) != 1:  # some are not: only those go through the rules
                fresh_keys = []
                for k, g in zip(keys, row_changes, strict=True):
                    if all_fresh_cells(g):
                        fresh_keys.append(k)
                    else:
                        slow.append((k, g, None))
                row_changes = [g for g in row_changes if all_fresh_cells(g)]
                flat = list(itertools.chain.from_iterable(row_changes))
                keys = fresh_keys
            if flat:
                fresh.append(FreshRows(tr, cids, keys, flat))
                wins += len(flat)
                top = max(top, max(map(_DBV, flat)))
        known = [row for _k, _c, row in slow if row is not None]
        states = iter(reader.states(known)) if known else iter(())
        for key, changes, row in slow:
            st = RowState() if row is None else next(states)
            for c in changes:
                if apply_change(st, c, row_defaults):
                    wins += 1
                    if c.db_version > top:
                        top = c.db_version
            if st.changed:
                written.append((tr, key, st))
    if written or fresh:
        write_rows(db, conn, written, top)
        write_fresh_rows(db, conn, fresh, top)
        conn.execute("UPDATE crsync_clock SET db_version = ? WHERE db_version < ?", (top, top))
    if pending:
        conn.executemany(
            "INSERT OR IGNORE INTO crsync_pending VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", pending
        )
    conn.execute("UPDATE crsync_clock SET merging = 0")
    return wins


@attrs.frozen
class FreshRows:
    """Rows :func:`merge_locked` found never seen and arriving as cells of their first life,
    bringing the same columns in the same order: every change wins."""

    tr: Tracked
    cids: tuple[str, ...]
    """The columns each row brings, in the order its changes came."""
    keys: list[tuple[SqlValue, ...]]
    changes: list[Change]
    """The rows' changes, row after row (``len(cids)`` per row, in ``cids`` order)."""


class _Ordinals(dict[bytes, int]):
    """Site ordinals by site id, looked up at C speed (``__getitem__``)."""

    def __init__(self, db: Database) -> None:
        super().__init__()
        self.db = db

    def __missing__(self, site: bytes) -> int:
        o = self[site] = self.db._site_ordinal(site)
        return o


def write_fresh_rows(
    db: Database, conn: sqlite3.Connection, fresh: list[FreshRows], version: int
) -> None:
    """Write rows created by :func:`merge_locked`'s fresh-row case: every change won, the
    row has cl 1, no sentinel, and the merge's version on every cell (what
    :func:`write_rows` writes for the same :class:`RowState`). Each statement's rows are
    zipped from columns built at C speed (one ``map`` per column), not row by row."""
    ords = _Ordinals(db)
    for f in fresh:
        tr, cids, flat = f.tr, f.cids, f.changes
        m = len(cids)
        keycols = [list(map(operator.itemgetter(j), f.keys)) for j in range(tr.npk)]
        cols = tuple(sorted(cids))
        values = [list(map(_VAL, flat[cids.index(c) :: m])) for c in cols]
        conn.executemany(upsert_sql(db, tr, cols), zip(*keycols, *values, strict=True))
        none = itertools.repeat(None)
        at = itertools.repeat(version)
        cells: list[Iterable[Any]] = [none] * (4 * tr.nslots)
        for i, cid in enumerate(cids):
            part = flat[i::m]
            k = 4 * tr.slots[cid]
            cells[k] = list(map(_CV, part))
            cells[k + 1] = at
            cells[k + 2] = list(map(ords.__getitem__, map(_SITE, part)))
            cells[k + 3] = list(map(_SEQ, part))
        one = itertools.repeat(1)
        conn.executemany(
            tr.meta_write_sql, zip(*keycols, one, none, none, none, at, *cells, strict=False)
        )


def canonical_keys(
    db: Database, tr: Tracked, rows: dict[tuple[SqlValue, ...], list[Change]]
) -> dict[tuple[SqlValue, ...], list[Change]]:
    """Apply the pk columns' affinity to incoming keys, as SQLite will when storing them."""
    affs = tr.pk_affinity
    if len(affs) == 1:  # one pass over the keys' types (keys come from unpack_pk: exact types)
        natural = _NATURAL_TYPES.get(affs[0])
        odd = [] if natural is None else [k for k in rows if type(k[0]) not in natural]
    else:
        odd = [k for k in rows if not all(_natural(a, v) for a, v in zip(affs, k, strict=True))]
    if not odd:
        return rows
    cols = ", ".join(f"k{j} {c.decltype}".rstrip() for j, c in enumerate(tr.info.pk))
    conn = db.conn
    conn.execute(f"CREATE TEMP TABLE IF NOT EXISTS crsync_keys_{tr.npk} ({cols})")
    conn.execute(f"DELETE FROM temp.crsync_keys_{tr.npk}")
    out = dict(rows)
    for k in odd:
        conn.execute(f"DELETE FROM temp.crsync_keys_{tr.npk}")
        conn.execute(f"INSERT INTO temp.crsync_keys_{tr.npk} VALUES ({', '.join('?' * tr.npk)})", k)
        canon = tuple(conn.execute(f"SELECT * FROM temp.crsync_keys_{tr.npk}").fetchone())
        conn.execute(f"DROP TABLE temp.crsync_keys_{tr.npk}")
        conn.execute(f"CREATE TEMP TABLE crsync_keys_{tr.npk} ({cols})")
        if canon != k:
            out.setdefault(canon, []).extend(out.pop(k))
    conn.execute(f"DROP TABLE temp.crsync_keys_{tr.npk}")
    return out


def defaults(db: Database, tr: Tracked) -> dict[str, SqlValue]:
    """The columns' default values (evaluated once per table)."""
    if tr.defaults is None:
        tr.defaults = {c.name: eval_default(db, c.default) for c in tr.info.columns}
    return tr.defaults


class _StateReader:
    """Reads the stored state of rows by key, in two parts: what decides whether a change can
    win (causal length, col_versions, values: :meth:`deciding`), and, only for rows where
    one may, the rest of the clocks (:meth:`states`)."""

    def __init__(self, db: Database, tr: Tracked) -> None:
        q = quote_ident
        self.db = db
        self.tr = tr
        self.npk = npk = tr.npk
        self.names = names = [name for name, _c0, _vi in tr.cell_layout()]
        slots = [tr.slots[n] for n in names]
        pcols = [f"m.p{j}" for j in range(npk)]
        join = " AND ".join(f"b.{q(c.name)} = m.p{j}" for j, c in enumerate(tr.info.pk))
        deciding = ", ".join(
            [
                *pcols,
                "m.cl",
                *(f"m.v{i}" for i in slots),
                *(f"b.{q(n)}" for n in names),
                f"b.{q(tr.info.pk[0].name)}",
            ]
        )
        rest = ", ".join(
            [*pcols, "m.sd", "m.ss", "m.sq", *(f"m.{x}{i}" for i in slots for x in "dsq")]
        )
        frm = f"FROM {tr.meta} AS m"
        self.deciding_sql = f"SELECT {deciding} {frm} LEFT JOIN {q(tr.info.name)} AS b ON {join}"
        self.rest_sql = f"SELECT {rest} {frm}"
        self.by_key = " WHERE " + " AND ".join(f"m.p{j} = ?" for j in range(npk))

    def deciding(self, keys: list[tuple[SqlValue, ...]]) -> dict[tuple[SqlValue, ...], Any]:
        """By stored key, for the rows of ``keys`` that have metadata: the key columns,
        ``cl``, then per current column (:meth:`Tracked.cell_layout` order) its col_version,
        then its value, then one key column of the table row (NULL: no table row)."""
        if self.db.conn.execute(f"SELECT 1 FROM {self.tr.meta} LIMIT 1").fetchone() is None:
            return {}  # first sync into an empty table: every row is new
        return self._fetch(self.deciding_sql, keys)

    def _fetch(self, sql: str, keys: list[tuple[SqlValue, ...]]) -> dict[tuple[SqlValue, ...], Any]:
        conn = self.db.conn
        npk = self.npk
        rows: list[Sequence[Any]] = []
        if npk == 1:
            full = sql + " WHERE m.p0 IN ({})".format(", ".join("?" * 500))
            for i in range(0, len(keys), 500):
                chunk = [k[0] for k in keys[i : i + 500]]
                one = (
                    full
                    if len(chunk) == 500
                    else (sql + " WHERE m.p0 IN ({})".format(", ".join("?" * len(chunk))))
                )
                rows += conn.execute(one, chunk).fetchall()
            return {(row[0],): row for row in rows}
        one = sql + self.by_key
        for k in keys:
            rows += conn.execute(one, k).fetchall()
        return {tuple(row[:npk]): row for row in rows}

    def states(self, deciding: list[Sequence[Any]]) -> list[RowState]:
        """The :class:`RowState` of rows read by :meth:`deciding`, in their order."""
        npk = self.npk
        names = self.names
        n = len(names)
        rest = self._fetch(self.rest_sql, [tuple(row[:npk]) for row in deciding])
        site_of = self.db._site_of
        out = []
        for row in deciding:
            more = rest[tuple(row[:npk])]
            cl = row[npk]
            exists = row[-1] is not None
            st = RowState(cl, exists)
            sd = more[npk]
            if sd is not None:
                st.sentinel = (cl, sd, site_of(more[npk + 1]), more[npk + 2])
            cells = st.cells
            for j, name in enumerate(names):
                v = row[npk + 1 + j]
                k = npk + 3 + 3 * j
                cells[name] = None if v is None else (v, more[k], site_of(more[k + 1]), more[k + 2])
            if exists:
                st.values = {name: row[npk + 1 + n + j] for j, name in enumerate(names)}
            out.append(st)
        return out


def write_rows(
    db: Database,
    conn: sqlite3.Connection,
    written: list[tuple[Tracked, tuple[SqlValue, ...], RowState]],
    version: int,
) -> None:
    deletes: dict[str, list[tuple[SqlValue, ...]]] = {}
    upserts: dict[tuple[str, tuple[str, ...]], list[tuple[SqlValue, ...]]] = {}
    metas: dict[str, list[tuple[SqlValue, ...]]] = {}
    ordinal = db._site_ordinal

    def stamp(clock: Clock) -> tuple[int, int, int, int]:
        dbv = version if clock[1] == MERGE_VERSION else clock[1]
        return (clock[0], dbv, ordinal(clock[2]), clock[3])

    for tr, key, st in written:
        name = tr.info.name
        if st.initially_exists and (st.reset or not st.exists):
            deletes.setdefault(name, []).append(key)
        if st.exists:
            cols = tuple(sorted(st.written))
            if cols or st.reset or not st.initially_exists:
                upserts.setdefault((name, cols), []).append(key + tuple(st.values[c] for c in cols))
        # metadata row
        sd: tuple[Any, ...] = (None, None, None)
        if st.sentinel is not None:
            _, d, s, q = stamp(st.sentinel)
            sd = (d, s, q)
        cells: list[Any] = [None] * (4 * tr.nslots)
        dbv = sd[0] or 0
        for cname, clock in st.cells.items():
            if clock is None:
                continue
            slot = tr.slots[cname]
            vals = stamp(clock)
            cells[4 * slot : 4 * slot + 4] = vals
            dbv = max(dbv, vals[1])
        if st.changed:
            dbv = version
        metas.setdefault(name, []).append((*key, st.cl, *sd, dbv, *cells))
    for name, rows in deletes.items():
        conn.executemany(db._tracked[name].delete_sql, rows)
    for (name, cols), rows in upserts.items():
        conn.executemany(upsert_sql(db, db._tracked[name], cols), rows)
    for name, rows in metas.items():
        tr = db._tracked[name]
        conn.executemany(tr.meta_write_sql, rows)


def upsert_sql(db: Database, tr: Tracked, cols: tuple[str, ...]) -> str:
    sql = tr.upserts.get(cols)
    if sql is None:
        q = quote_ident
        pk = [q(c.name) for c in tr.info.pk]
        names = pk + [q(c) for c in cols]
        sql = (
            f"INSERT INTO {q(tr.info.name)} ({', '.join(names)}) "
            f"VALUES ({', '.join('?' * len(names))}) ON CONFLICT ({', '.join(pk)}) "
        )
        if cols:
            sql += "DO UPDATE SET " + ", ".join(f"{q(c)} = excluded.{q(c)}" for c in cols)
        else:
            sql += "DO NOTHING"
        tr.upserts[cols] = sql
    return sql


def applicable(db: Database, table: str, batch: list[Change]) -> list[Change]:
    """Drop kept-aside changes whose pk does not fit the table as it is now declared
    (they can never apply; keeping them would make every later track() fail)."""
    tr = db._tracked.get(table)
    if tr is None:
        return batch
    out = []
    for c in batch:
        if len(unpack_pk(c.pk)) == tr.npk:
            out.append(c)
        else:
            log.warning("crsync.pending.dropped table=%s pk=%s reason=pk-arity", table, c.pk.hex())
    return out


def merge_setting_aside_locked(
    db: Database, conn: sqlite3.Connection, batch: list[Change]
) -> tuple[int, int]:
    """Inside a write transaction: merge, setting aside the rows that cannot be applied."""
    return rejected.merge_or_set_aside(db, conn, batch, functools.partial(merge_locked, db))


def eval_default(db: Database, expr: str | None) -> SqlValue:
    if expr is None:
        return None
    # The expression comes from the app's own schema (sqlite_schema), not from a peer.
    value: SqlValue = db.conn.execute(f"SELECT {expr}").fetchone()[0]
    return value
