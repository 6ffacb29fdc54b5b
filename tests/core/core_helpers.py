"""Helpers shared by the core engine tests (not a test module)."""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import crsync
from crsync import Change

SITE_A = bytes([1] * 16)
SITE_B = bytes([2] * 16)
SITE_C = bytes([3] * 16)


def set_site(db: crsync.Database, site: bytes) -> None:
    """Give a fresh database a chosen site id (tests need A < B < C byte-wise)."""
    db.conn.execute("UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (site,))


def open_db(path: str | Path = ":memory:", site: bytes | None = None) -> crsync.Database:
    db = crsync.connect(path)
    if site is not None:
        set_site(db, site)
    return db


def cells(db: crsync.Database, table: str | None = None) -> set[tuple[Any, ...]]:
    """(table, pk values, cid, val, col_version, cl) of every current change: the CRDT state."""
    return {
        (c.table, crsync.unpack_pk(c.pk), c.cid, canon(c.val), c.col_version, c.cl)
        for c in db.changes()
        if table is None or c.table == table
    }


def canon(v: Any) -> Any:
    """A value with its storage class and the exact bits of a real (so 1 != 1.0, -0.0 != 0.0)."""
    if isinstance(v, float):
        return ("real", struct.pack(">d", v))
    return (type(v).__name__, v)


def rows(conn: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    """Every row of a table with the storage class of each value, sorted."""
    q = '"' + table.replace('"', '""') + '"'
    out = [tuple(canon(v) for v in r) for r in conn.execute(f"SELECT * FROM {q}")]
    return sorted(out, key=repr)


def dump(conn: sqlite3.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Content of every table (user data and crsync metadata), for before/after comparisons."""
    names = [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    return {n: rows(conn, n) for n in sorted(names)}


def by_version(changes: Iterable[Change]) -> dict[int, list[Change]]:
    out: dict[int, list[Change]] = {}
    for c in changes:
        out.setdefault(c.db_version, []).append(c)
    return out
