"""Tracking: which tables crsync replicates, and their per-table metadata.

The storage API for crsync's own CLI and :func:`crsync.trigger_sql`: functions that read the
tracked-table registry (``crsync_tables``) and the per-table metadata (``<table>__crsync``),
so that no module outside storage runs SQL on them.
"""

from __future__ import annotations

import json
import sqlite3
from typing import TYPE_CHECKING

import attrs

from .pack import SqlValue
from .schema import TableInfo, quote_ident, validate_table
from .triggers import generate, meta_table_name

if TYPE_CHECKING:
    from .database import Database


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
    state_sql: str
    state_in_sql: str
    delete_sql: str
    meta_write_sql: str
    pk_affinity: tuple[str, ...]
    defaults: dict[str, SqlValue] | None = None
    upserts: dict[tuple[str, ...], str] = attrs.Factory(dict)


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
