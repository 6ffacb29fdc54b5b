"""One interface over a crsync database and a real cr-sqlite 0.16 database (see crsqlite.py).

Interop tests run the same SQL and the same syncs against either kind and compare the results:

    rep = new_replica("crsync", peer, SCHEMA, TABLES)   # or "cr-sqlite"
    rep.execute("INSERT INTO t VALUES (?, ?, ?)", ["r1", 1, "x"])
    other.apply(rep.changes())

Changes travel as plain 9-tuples in ``crsql_changes`` column order, the only shape both accept.
"""

from __future__ import annotations

import math
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from typing import Protocol

from crsqlite import Change, CrDb, CrSqliteError, CrSqlitePeerProcess, SqlValue

import crsync

CRSYNC = "crsync"
CRSQLITE = "cr-sqlite"
KINDS = (CRSYNC, CRSQLITE)

Typed = tuple[str, object]


class SqlFailed(Exception):
    """A statement failed on a replica (either kind), e.g. a constraint violation."""


class Replica(Protocol):
    kind: str
    name: str

    @property
    def site_id(self) -> bytes: ...

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> None: ...

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[tuple[SqlValue, ...]]: ...

    def changes(self, since: int = 0) -> list[Change]: ...

    def apply(self, changes: Iterable[Sequence[SqlValue]]) -> int: ...

    def version(self) -> int:
        """A cursor: every change so far has a db_version at or below it."""
        ...

    def close(self) -> None: ...


class CrsyncReplica:
    kind = CRSYNC

    def __init__(self, name: str, schema: Sequence[str], tables: Sequence[str]) -> None:
        self.name = name
        self.db = crsync.connect(":memory:")
        for ddl in schema:
            self.db.conn.execute(ddl)
        for t in tables:
            self.db.track(t, integer_keys="app-assigned")

    def __repr__(self) -> str:
        return f"<crsync {self.name}>"

    @property
    def site_id(self) -> bytes:
        return self.db.site_id

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> None:
        try:
            self.db.conn.execute(sql, tuple(params))
        except sqlite3.Error as e:
            raise SqlFailed(str(e)) from e

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[tuple[SqlValue, ...]]:
        return [tuple(r) for r in self.db.conn.execute(sql, tuple(params))]

    def changes(self, since: int = 0) -> list[Change]:
        return [c.as_tuple() for c in self.db.changes(since)]

    def apply(self, changes: Iterable[Sequence[SqlValue]]) -> int:
        return self.db.merge(list(changes))

    def version(self) -> int:
        return self.db.db_version

    def close(self) -> None:
        self.db.close()


class CrReplica:
    kind = CRSQLITE

    def __init__(self, db: CrDb, schema: Sequence[str], tables: Sequence[str]) -> None:
        self.name = db.name
        self.db = db
        ddl = "".join(s.rstrip(";") + ";" for s in schema)
        ddl += "".join(f"SELECT crsql_as_crr('{t}');" for t in tables)
        db.exec(ddl)

    def __repr__(self) -> str:
        return f"<cr-sqlite {self.name}>"

    @property
    def site_id(self) -> bytes:
        return self.db.site_id

    def execute(self, sql: str, params: Sequence[SqlValue] = ()) -> None:
        try:
            self.db.query(sql, params)
        except CrSqliteError as e:
            raise SqlFailed(str(e)) from e

    def query(self, sql: str, params: Sequence[SqlValue] = ()) -> list[tuple[SqlValue, ...]]:
        return self.db.query(sql, params)

    def changes(self, since: int = 0) -> list[Change]:
        return self.db.changes(since)

    def apply(self, changes: Iterable[Sequence[SqlValue]]) -> int:
        return self.db.apply(changes)

    def version(self) -> int:
        return self.db.db_version

    def close(self) -> None:
        self.db.peer.drop(self.name)


_counter = 0


def new_replica(
    kind: str,
    peer: CrSqlitePeerProcess,
    schema: Sequence[str],
    tables: Sequence[str],
    *,
    site_id: bytes | None = None,
) -> Replica:
    """A fresh in-memory replica of ``kind`` with ``schema`` created and ``tables`` replicated.

    ``site_id`` is only honoured for cr-sqlite (crsync picks its own)."""
    global _counter
    _counter += 1
    if kind == CRSYNC:
        return CrsyncReplica(f"s{_counter}", schema, tables)
    if kind == CRSQLITE:
        return CrReplica(peer.open(f"interop{_counter}", site_id=site_id), schema, tables)
    raise ValueError(kind)


# ------------------------------------------------------------------------------------------------
# exact comparison


def typed(v: object) -> Typed:
    """A value with its storage class, so 1 != 1.0 and reals compare bit for bit."""
    if v is None:
        return ("null", None)
    if isinstance(v, bool):
        raise TypeError("bool is not an SQLite value")
    if isinstance(v, int):
        return ("integer", v)
    if isinstance(v, float):
        if math.isnan(v):
            return ("real", "nan")
        return ("real", struct.pack(">d", v).hex())
    if isinstance(v, str):
        return ("text", v)
    if isinstance(v, bytes):
        return ("blob", v)
    raise TypeError(f"not an SQLite value: {v!r}")


def typed_rows(rows: Iterable[Sequence[object]]) -> list[tuple[Typed, ...]]:
    return [tuple(typed(v) for v in r) for r in rows]


def table_rows(rep: Replica, table: str, order_by: str) -> list[tuple[Typed, ...]]:
    """Every row of ``table`` (ORDER BY ``order_by``), values typed."""
    return typed_rows(rep.query(f"SELECT * FROM {table} ORDER BY {order_by}"))


def cell_state(changes: Iterable[Change]) -> set[tuple[object, ...]]:
    """(table, pk, cid, typed val, col_version, cl) of every change: the replicated state
    without the per-replica parts (db_version, seq, and site ordinals)."""
    return {(c[0], c[1], c[2], typed(c[3]), c[4], c[7]) for c in changes}
