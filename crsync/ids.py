"""Integer keys that stay unique across devices: :func:`new_id` and :func:`rekey`.

A table keyed by ``INTEGER PRIMARY KEY`` lets SQLite pick the next free number for a new row;
two devices then pick the same numbers for different rows, and the rows merge into one. An app
that keeps integer keys gives every new row ``crsync.new_id()`` instead, and re-keys the rows
it already has once with :func:`rekey` (``crsync rekey``), before the table is first synced.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Callable, Sequence

import attrs

from .errors import CrsyncError, SchemaError
from .schema import INTERNAL_PREFIX, META_SUFFIX, quote_ident, table_info

log = logging.getLogger(__name__)

ID_BITS = 63


def new_id() -> int:
    """A new 64-bit row id, unique across devices: a random positive signed 64-bit integer.

    63 random bits from the OS's secure generator (``secrets``), never 0. Two ids collide with
    probability about n²/2⁶⁴ among n ids of one table: one in 18 million for a million rows, one
    in 1,800 for a hundred million. Fully random rather than time-ordered on purpose: every
    bit spent on a timestamp doubles the collision odds of rows made in the same period (a bulk
    import on two devices at once), and SQLite's B-tree handles random integer keys as well as
    the random UUID text keys apps commonly use. Ids fit SQLite's INTEGER; JavaScript numbers
    hold integers only up to 2⁵³, so send ids to JavaScript as strings.
    """
    while True:
        v = secrets.randbits(ID_BITS)
        if v:
            return v


@attrs.frozen
class Reference:
    """A column holding keys of the re-keyed table."""

    table: str
    column: str
    declared: bool  # a declared FOREIGN KEY (else named by the caller)

    def __str__(self) -> str:
        return f"{self.table}.{self.column}"


@attrs.frozen
class RekeyResult:
    """What :func:`rekey` did."""

    table: str
    key: str
    rows: int
    references: tuple[Reference, ...]
    updated_references: int  # referencing cells rewritten


def parse_ref(text: str) -> tuple[str, str]:
    """``table.column`` (the last dot separates them) -> (table, column)."""
    table, dot, column = text.rpartition(".")
    if not dot or not table or not column:
        raise CrsyncError(f"a reference is written table.column, not {text!r}")
    return table, column


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name"
        )
        if not r[0].startswith(INTERNAL_PREFIX) and not r[0].endswith(META_SUFFIX)
    ]


def find_references(conn: sqlite3.Connection, table: str, key: str) -> list[Reference]:
    """Columns whose declared FOREIGN KEY points at ``table``'s key (``PRAGMA
    foreign_key_list`` of every table)."""
    out: list[Reference] = []
    for t in _user_tables(conn):
        fks: dict[int, list[tuple[str, str | None, str]]] = {}
        for fk_id, target, frm, to in conn.execute(
            'SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?)', (t,)
        ):
            fks.setdefault(fk_id, []).append((target, to, frm))
        for parts in fks.values():
            if parts[0][0].lower() != table.lower():
                continue
            if len(parts) != 1:
                continue  # a composite key cannot point at a one-column key
            _target, to, frm = parts[0]
            if to is None or to.lower() == key.lower():
                out.append(Reference(t, frm, True))
    return out


def _tracked(conn: sqlite3.Connection, table: str) -> bool:
    try:
        return (
            conn.execute(
                "SELECT 1 FROM crsync_tables WHERE name = ? COLLATE NOCASE", (table,)
            ).fetchone()
            is not None
        )
    except sqlite3.OperationalError:
        return False  # crsync never touched this database


def rekey(
    conn: sqlite3.Connection,
    table: str,
    refs: Sequence[str] = (),
    *,
    make_id: Callable[[], int] = new_id,
) -> RekeyResult:
    """Give every row of ``table`` a new key from :func:`new_id`, and rewrite the columns that
    refer to it: those with a declared FOREIGN KEY to it (found through ``PRAGMA
    foreign_key_list`` on every table) and those named in ``refs`` (``"table.column"``, for
    references without a declared foreign key). One transaction: all or nothing.

    Foreign keys are checked at commit (``PRAGMA defer_foreign_keys``), and ``ON UPDATE
    CASCADE`` actions cannot apply a mapping twice (new ids never equal old ones).

    Refuses a tracked table: its rows' keys are their identity on every device, so re-keying
    one copy would make each row a different row elsewhere. Re-key before the first
    ``track`` (or, on a database that never synced, ``untrack`` first); see the guide
    "Track an existing app".

    Raises:
        SchemaError: the table is not keyed by one integer column, or is tracked.
        CrsyncError: a reference names a missing table or column, or SQLite refused.
    """
    if conn.in_transaction:
        raise CrsyncError("cannot re-key inside an open transaction; commit or roll back first")
    info = table_info(conn, table)
    name = info.name
    if len(info.pk) != 1 or "INT" not in info.pk[0].decltype.upper():
        raise SchemaError(
            name, "rekey needs a table keyed by one INTEGER column (its rowid or not)"
        )
    if _tracked(conn, name):
        raise SchemaError(
            name,
            "is tracked: a row's key is its identity on every device, so new keys would "
            "make each row a new row elsewhere. Re-key before tracking; on a database that "
            "never synced, `crsync untrack` it first. A table that already synced keeps its "
            "keys: give new rows crsync.new_id() and track with integer_keys='app-assigned'",
        )
    key = info.pk[0].name
    references = find_references(conn, name, key)
    for text in refs:
        t, c = parse_ref(text)
        try:
            ti = table_info(conn, t)
        except SchemaError as exc:
            raise CrsyncError(f"reference {text!r}: {exc.problem}") from None
        col = next((x.name for x in (*ti.pk, *ti.columns) if x.name.lower() == c.lower()), None)
        if col is None:
            raise CrsyncError(f"reference {text!r}: table {ti.name!r} has no column {c!r}")
        r = Reference(ti.name, col, False)
        if (r.table.lower(), r.column.lower()) == (name.lower(), key.lower()):
            raise CrsyncError(f"reference {text!r} is the key being re-keyed itself")
        if not any(
            (x.table.lower(), x.column.lower()) == (r.table.lower(), r.column.lower())
            for x in references
        ):
            references.append(r)
    for r in references:
        if _tracked(conn, r.table) and r.table.lower() != name.lower():
            log.info("crsync.rekey.tracked_reference %s (its rewrites replicate)", r)
    q = quote_ident
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("PRAGMA defer_foreign_keys = ON")
        conn.execute("DROP TABLE IF EXISTS temp.crsync_rekey")
        conn.execute(
            "CREATE TEMP TABLE crsync_rekey (old INTEGER PRIMARY KEY, new INTEGER NOT NULL UNIQUE)"
        )
        olds = [r[0] for r in conn.execute(f"SELECT {q(key)} FROM {q(name)}")]
        if any(not isinstance(o, int) for o in olds):
            raise SchemaError(name, f"column {key!r} holds values that are not integers")
        taken = set(olds)
        mapping: list[tuple[int, int]] = []
        for o in olds:
            n = make_id()
            while n in taken:
                n = make_id()
            taken.add(n)
            mapping.append((o, n))
        conn.executemany("INSERT INTO temp.crsync_rekey (old, new) VALUES (?, ?)", mapping)
        updated = 0
        # Referencing columns first: an ON UPDATE CASCADE then finds nothing left to cascade.
        for r in references:
            col = q(r.column)
            cur = conn.execute(
                f"UPDATE {q(r.table)} SET {col} = (SELECT new FROM temp.crsync_rekey "
                f"WHERE old = {col}) WHERE {col} IN (SELECT old FROM temp.crsync_rekey)"
            )
            updated += max(cur.rowcount, 0)
        conn.execute(
            f"UPDATE {q(name)} SET {q(key)} = (SELECT new FROM temp.crsync_rekey "
            f"WHERE old = {q(name)}.{q(key)})"
        )
        conn.execute("DROP TABLE temp.crsync_rekey")
        conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        if isinstance(exc, sqlite3.Error):
            raise CrsyncError(f"re-keying {name!r} failed, nothing was changed: {exc}") from exc
        raise
    log.info(
        "crsync.rekey table=%s rows=%d references=%s",
        name,
        len(mapping),
        ",".join(map(str, references)) or "-",
    )
    return RekeyResult(name, key, len(mapping), tuple(references), updated)
