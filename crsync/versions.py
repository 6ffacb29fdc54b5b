"""Versions: sealing the open version of the change feed, and the per-version sequence.

Every local write records the open ``db_version`` (``crsync_clock``). Sealing closes it if it
holds changes, so that what a reader saw at version ``v`` never grows afterwards; before
closing, local records written by different connections with the same seq are renumbered
(see :mod:`crsync.triggers`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .triggers import cell_columns

if TYPE_CHECKING:
    from .database import Database
    from .tracking import Tracked

log = logging.getLogger(__name__)


def has_changes_at(db: Database, version: int) -> bool:
    """Whether any tracked table has a record at ``version``."""
    for tr in db._tracked.values():
        if db.conn.execute(f"SELECT 1 FROM {tr.meta} WHERE dbv = ? LIMIT 1", (version,)).fetchone():
            return True
    return False


def seal(db: Database) -> int:
    """Seal the open version if it holds changes; return the last sealed version."""
    db._refresh()
    with db._read() as conn:
        v = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
        if db.read_only or not has_changes_at(db, v):
            return int(v) - 1  # read-only: the open version stays unreported
    with db._write() as conn:
        v = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
        if not has_changes_at(db, v):
            return int(v) - 1
        renumber_repeated_seqs(db, v)
        conn.execute("UPDATE crsync_clock SET db_version = ?", (v + 1,))
        return int(v)


def _local_records(tr: Tracked) -> list[tuple[str, str]]:
    """(seq column, WHERE clause) of the local records at version ?1 of a table: its
    row-existence records, then each current column's cells."""
    out = [("sq", "dbv = ?1 AND sd = ?1 AND ss = 0")]
    for slot in sorted(tr.slots.values()):
        _v, d, site, q = cell_columns(slot)
        out.append((q, f"dbv = ?1 AND {d} = ?1 AND {site} = 0"))
    return out


def renumber_repeated_seqs(db: Database, version: int) -> bool:
    """Inside the sealing transaction: if two local records of ``version`` share a seq
    (written by different connections, see crsync.triggers), renumber all local records
    of the version 0, 1, 2, ... in (seq, table, record kind, key) order: strictly
    monotone in seq, so every transaction keeps its own order. Returns whether it did.
    """
    conn = db.conn
    # Skipped when provably unneeded: this connection opened the version (its previous
    # seal) and no other connection has committed since (PRAGMA data_version is
    # unchanged), so every local record of the version has this connection's seqs.
    dv = conn.execute("PRAGMA data_version").fetchone()[0]
    clean = db._seq_clean == (version, dv)
    db._seq_clean = (version + 1, dv)  # the next version opens now, empty
    if clean:
        return False
    targets = [
        (tr, col, where)
        for name in sorted(db._tracked)
        for tr in (db._tracked[name],)
        for col, where in _local_records(tr)
    ]
    if not targets:
        return False
    union = " UNION ALL ".join(
        f"SELECT {col} AS s FROM {tr.meta} WHERE {where}" for tr, col, where in targets
    )
    dup = conn.execute(
        f"SELECT 1 FROM ({union}) GROUP BY s HAVING count(*) > 1 LIMIT 1", (version,)
    ).fetchone()
    if dup is None:
        return False
    records: list[tuple[int, int, int, tuple[Any, ...]]] = []
    for t_index, (tr, col, where) in enumerate(targets):
        pks = ", ".join(f"p{j}" for j in range(tr.npk))
        sql = f"SELECT {col}, {pks} FROM {tr.meta} WHERE {where} ORDER BY {pks}"
        for n, row in enumerate(conn.execute(sql, (version,))):
            records.append((row[0], t_index, n, tuple(row[1:])))
    records.sort(key=lambda r: r[:3])
    updates: dict[int, list[tuple[Any, ...]]] = {}
    for new_seq, (_seq, t_index, _n, key) in enumerate(records):
        updates.setdefault(t_index, []).append((new_seq, *key))
    for t_index, rows in updates.items():
        tr, col, _where = targets[t_index]
        match = " AND ".join(f"p{j} = ?" for j in range(tr.npk))
        conn.executemany(f"UPDATE {tr.meta} SET {col} = ? WHERE {match}", rows)
    log.info("crsync.seq.renumbered version=%d records=%d", version, len(records))
    return True
