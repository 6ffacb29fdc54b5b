"""Introspection of replicated tables: validation, replicated-schema description, fingerprint."""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3

import attrs

from .errors import CrsyncError, SchemaError

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


INTEGER_KEYS_APP_ASSIGNED = "app-assigned"
_INTEGER_KEYS_META = "integer_keys:"
GUIDE = "docs/guides/track-existing-app.md"


def is_rowid_alias(conn: sqlite3.Connection, info: TableInfo) -> bool:
    """True if the table's key is its rowid (a single ``INTEGER PRIMARY KEY`` of a rowid
    table): SQLite then gives a new row the next free number when the insert names no key."""
    if info.without_rowid or len(info.pk) != 1 or info.pk[0].decltype.upper() != "INTEGER":
        return False
    # "INTEGER PRIMARY KEY DESC" is not an alias (a SQLite quirk): it has its own index.
    return not conn.execute(
        "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'", (info.name,)
    ).fetchone()


def integer_keys_recorded(conn: sqlite3.Connection, table: str) -> str | None:
    """The ``integer_keys`` choice recorded when ``table`` was tracked, if it still is."""
    try:
        row = conn.execute(
            "SELECT m.value FROM crsync_meta AS m JOIN crsync_tables AS t "
            "ON t.name = ? WHERE m.key = ?",
            (table, _INTEGER_KEYS_META + table),
        ).fetchone()
    except sqlite3.OperationalError:
        return None  # crsync never touched this database
    return None if row is None else str(row[0])


def record_integer_keys(conn: sqlite3.Connection, table: str, integer_keys: str | None) -> None:
    """Remember the ``integer_keys`` opt-in of a tracked table (inside ``track``'s
    transaction), so re-tracking and migrations keep accepting the table."""
    if integer_keys is not None:
        conn.execute(
            "INSERT OR REPLACE INTO crsync_meta (key, value) VALUES (?, ?)",
            (_INTEGER_KEYS_META + table, integer_keys),
        )


def _check_integer_keys(integer_keys: str | None) -> None:
    if integer_keys not in (None, INTEGER_KEYS_APP_ASSIGNED):
        raise CrsyncError(
            f"integer_keys must be None or {INTEGER_KEYS_APP_ASSIGNED!r}, not {integer_keys!r}"
        )


def _index_columns(conn: sqlite3.Connection, index: str) -> str:
    names = [
        n if n is not None else "<expression>"
        for (n,) in conn.execute(
            "SELECT name FROM pragma_index_info(?) ORDER BY seqno", (index,)
        ).fetchall()
    ]
    return ", ".join(names)


def validate_table(
    conn: sqlite3.Connection, table: str, *, integer_keys: str | None = None
) -> TableInfo:
    """Check that a table can converge when replicated, and return its shape.

    Refuses, naming the table and every problem at once: no primary key, a nullable primary
    key, AUTOINCREMENT, an ``INTEGER PRIMARY KEY`` whose ids SQLite assigns (unless
    ``integer_keys="app-assigned"``, here or recorded when the table was tracked), UNIQUE
    constraints or indexes other than the primary key, NOT NULL columns without a DEFAULT,
    foreign keys, a column named ``-1``, and crsync's own tables.

    Args:
        integer_keys: ``"app-assigned"``: the app gives every new row of a rowid-keyed table
            an id unique across devices (:func:`crsync.new_id`), so the integer key is
            accepted.

    Raises:
        SchemaError: the table cannot be replicated; ``.problems`` lists every problem.
    """
    _check_integer_keys(integer_keys)
    if table.startswith(INTERNAL_PREFIX) or table.endswith(META_SUFFIX):
        raise SchemaError(table, "crsync's own tables cannot be replicated")
    info = table_info(conn, table)
    name = info.name
    problems: list[str] = []
    found = _table_sql(conn, name)
    sql = found[2] if found else ""
    autoincrement = bool(_AUTOINCREMENT.search(sql))
    rowid_alias = is_rowid_alias(conn, info)
    if integer_keys is None:
        integer_keys = integer_keys_recorded(conn, name)
    if not info.pk:
        problems.append(
            "has no PRIMARY KEY; replicated rows need a primary key as their identity "
            "(rebuild it with a key column, e.g. id TEXT PRIMARY KEY NOT NULL holding UUIDs)"
        )
    if autoincrement:
        problems.append(
            f"column {info.pk[0].name!r} uses AUTOINCREMENT: replicas would give the same key "
            "to different rows; rebuild the table without AUTOINCREMENT and use UUID text keys "
            "or crsync.new_id()"
        )
    elif rowid_alias and integer_keys != INTEGER_KEYS_APP_ASSIGNED:
        problems.append(
            f"column {info.pk[0].name!r} is an INTEGER PRIMARY KEY (the rowid): SQLite gives a "
            "new row the next free number, so two devices give the same id to different rows "
            "and they merge into one. Give new rows ids unique across devices "
            "(crsync.new_id(); re-key existing rows with `crsync rekey`) and track with "
            "integer_keys='app-assigned' (CLI: --integer-keys app-assigned), or use UUID "
            "text keys"
        )
    for c in info.pk:
        if not c.notnull and not rowid_alias and not info.without_rowid:
            problems.append(f"primary key column {c.name!r} is nullable; declare it NOT NULL")
    for idx_name, unique, origin in conn.execute(
        'SELECT name, "unique", origin FROM pragma_index_list(?) ORDER BY seq DESC', (name,)
    ).fetchall():
        if unique and origin != "pk":
            cols = _index_columns(conn, idx_name)
            what = (
                f"a UNIQUE constraint on ({cols})"
                if origin == "u"
                else f"a UNIQUE index {idx_name} on ({cols})"
            )
            problems.append(
                f"has {what} besides the primary key; concurrent inserts on two devices "
                "could not be merged (drop it, or make those columns the primary key)"
            )
    for c in info.columns:
        if c.name == "-1":
            problems.append(
                "has a column named '-1', which the change format reserves for row-existence "
                "records; rename the column"
            )
        if c.notnull and c.default is None:
            problems.append(
                f"column {c.name!r} is NOT NULL without a DEFAULT; merges create rows one "
                "cell at a time, so it needs a default"
            )
    fks: dict[int, tuple[str, list[str], list[str | None]]] = {}
    for fk_id, _seq, target, frm, to in conn.execute(
        'SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq',
        (name,),
    ).fetchall():
        entry = fks.setdefault(fk_id, (target, [], []))
        entry[1].append(frm)
        entry[2].append(to)
    for target, frm_cols, to_cols in (fks[k] for k in sorted(fks, reverse=True)):
        to_text = "" if None in to_cols else f"({', '.join(str(t) for t in to_cols)})"
        problems.append(
            f"has a FOREIGN KEY ({', '.join(frm_cols)}) REFERENCES {target!r}{to_text}; "
            "replicas deliver rows in any order, so checked foreign keys cannot be honoured "
            "(rebuild the table without the REFERENCES clause and keep the column)"
        )
    if problems:
        if len(problems) == 1:
            text = problems[0]
        else:
            text = f"{len(problems)} problems: " + "; ".join(
                f"({i}) {p}" for i, p in enumerate(problems, 1)
            )
        raise SchemaError(name, f"{text} (rebuild recipes: {GUIDE})", problems)
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
