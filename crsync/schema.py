"""Introspection of replicated tables: validation, replicated-schema description, fingerprint."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import attrs

from .errors import SchemaError

INTERNAL_PREFIX = "crsync_"
# AUTOINCREMENT is only valid right after "PRIMARY KEY [ASC|DESC] [ON CONFLICT x]"; matching it
# there (not anywhere in the text) keeps columns named e.g. "autoincrement_hint" acceptable.
_AUTOINCREMENT = re.compile(
    r"\bPRIMARY\s+KEY(?:\s+(?:ASC|DESC))?(?:\s+ON\s+CONFLICT\s+\w+)?\s+AUTOINCREMENT\b",
    re.IGNORECASE,
)
META_SUFFIX = "__crsync"


@attrs.frozen
class Column:
    """One column of a replicated table, as declared."""

    name: str
    decltype: str
    notnull: bool
    default: str | None
    pk_index: int  # 0 for non-pk, else 1-based position in the primary key


@attrs.frozen
class TableInfo:
    """The replicated shape of a table: its primary key and its other columns."""

    name: str
    pk: tuple[Column, ...]
    columns: tuple[Column, ...]  # non-pk columns, declaration order
    without_rowid: bool

    @property
    def pk_names(self) -> tuple[str, ...]:
        """Primary-key column names in primary-key order."""
        return tuple(c.name for c in self.pk)

    @property
    def column_names(self) -> tuple[str, ...]:
        """Non-pk column names in declaration order."""
        return tuple(c.name for c in self.columns)

    def describe(self) -> dict[str, object]:
        """The replicated schema as plain data (stable, language-neutral)."""
        return {
            "table": self.name,
            "pk": list(self.pk_names),
            "columns": sorted(self.column_names),
        }


def quote_ident(name: str) -> str:
    """Quote an SQL identifier (any name, including quotes, spaces, keywords, unicode)."""
    if "\x00" in name:
        raise SchemaError(name, "identifiers cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def _table_sql(conn: sqlite3.Connection, table: str) -> tuple[str, str, str] | None:
    """(canonical name, type, sql) of a table or view, matched case-insensitively."""
    row = conn.execute(
        "SELECT name, type, sql FROM sqlite_schema WHERE name = ? COLLATE NOCASE AND type IN "
        "('table', 'view') AND name NOT LIKE 'sqlite_%'",
        (table,),
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2] or "")


def table_info(conn: sqlite3.Connection, table: str) -> TableInfo:
    """Read a table's declared shape, without validating it.

    Raises:
        SchemaError: the table does not exist or is a view.
    """
    found = _table_sql(conn, table)
    if found is None:
        raise SchemaError(table, "no such table")
    table, kind, sql = found
    if kind != "table":
        raise SchemaError(table, f"is a {kind}, not a table")
    if sql.lstrip().upper().startswith("CREATE VIRTUAL"):
        raise SchemaError(table, "virtual tables cannot be replicated")
    rows = conn.execute(
        'SELECT name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?)',
        (table,),
    ).fetchall()
    cols = [
        Column(name, decltype or "", bool(notnull), dflt, pk)
        for name, decltype, notnull, dflt, pk, hidden in rows
        if hidden == 0
    ]
    pk = tuple(sorted((c for c in cols if c.pk_index), key=lambda c: c.pk_index))
    others = tuple(c for c in cols if not c.pk_index)
    wr = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE name = ? AND schema = 'main'", (table,)
    ).fetchone()
    return TableInfo(table, pk, others, bool(wr and wr[0]))


def validate_table(conn: sqlite3.Connection, table: str) -> TableInfo:
    """Check that a table can converge when replicated, and return its shape.

    Refuses, naming the table and the problem: no primary key, a nullable primary key,
    AUTOINCREMENT, UNIQUE constraints or indexes other than the primary key, NOT NULL
    columns without a DEFAULT, foreign keys, and crsync's own tables.

    Raises:
        SchemaError: the first problem found.
    """
    if table.startswith(INTERNAL_PREFIX) or table.endswith(META_SUFFIX):
        raise SchemaError(table, "crsync's own tables cannot be replicated")
    info = table_info(conn, table)
    name = info.name
    if not info.pk:
        raise SchemaError(
            name, "has no PRIMARY KEY; replicated rows need a primary key as their identity"
        )
    found = _table_sql(conn, name)
    sql = found[2] if found else ""
    if _AUTOINCREMENT.search(sql):
        raise SchemaError(
            name,
            "uses AUTOINCREMENT: replicas would give the same key to different rows; "
            "use random keys (UUIDs)",
        )
    rowid_alias = (
        len(info.pk) == 1 and info.pk[0].decltype.upper() == "INTEGER" and not info.without_rowid
    )
    for c in info.pk:
        if not c.notnull and not rowid_alias and not info.without_rowid:
            raise SchemaError(
                name, f"primary key column {c.name!r} is nullable; declare it NOT NULL"
            )
    for idx_name, unique, origin in conn.execute(
        'SELECT name, "unique", origin FROM pragma_index_list(?)', (name,)
    ):
        if unique and origin != "pk":
            raise SchemaError(
                name,
                f"has a UNIQUE constraint or index ({idx_name}) besides the primary key; "
                "concurrent inserts on two devices could not be merged",
            )
    for c in info.columns:
        if c.name == "-1":
            raise SchemaError(
                name,
                "has a column named '-1', which the change format reserves for row-existence "
                "records; rename the column",
            )
        if c.notnull and c.default is None:
            raise SchemaError(
                name,
                f"column {c.name!r} is NOT NULL without a DEFAULT; merges create rows one "
                "cell at a time, so it needs a default",
            )
    fks = conn.execute('SELECT "table" FROM pragma_foreign_key_list(?)', (name,)).fetchall()
    if fks:
        raise SchemaError(
            name,
            f"has a FOREIGN KEY (to {fks[0][0]!r}); replicas deliver rows in any order, so "
            "checked foreign keys cannot be honoured",
        )
    return info


def fingerprint_of(info: TableInfo) -> str:
    """Fingerprint of a replicated schema: sha256 over its canonical JSON description."""
    text = json.dumps(info.describe(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "v1:" + hashlib.sha256(text.encode("ascii")).hexdigest()


def schema_fingerprint(conn: sqlite3.Connection, table: str) -> str:
    """Deterministic fingerprint of a table's replicated schema.

    Computed from the schema itself (table name, primary-key columns in order, the set of
    other columns), so it is the same across processes, machines and Python versions.

    Raises:
        SchemaError: the table does not exist.
    """
    return fingerprint_of(table_info(conn, table))


def affinity(decltype: str) -> str:
    """SQLite's column affinity of a declared type: INTEGER, TEXT, BLOB, REAL or NUMERIC."""
    t = decltype.upper()
    if "INT" in t:
        return "INTEGER"
    if "CHAR" in t or "CLOB" in t or "TEXT" in t:
        return "TEXT"
    if "BLOB" in t or not t:
        return "BLOB"
    if "REAL" in t or "FLOA" in t or "DOUB" in t:
        return "REAL"
    return "NUMERIC"
