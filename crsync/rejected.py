"""Changes from other devices that this database cannot apply: set aside, never lost.

A change can be well formed and still impossible to apply here: the row breaks a constraint
of this database's schema (NOT NULL, CHECK, a STRICT column type, a text key in an
``INTEGER PRIMARY KEY``, a foreign key, a unique index), its key has the wrong number of
values, or it holds what SQLite cannot store (a NaN key, text that is not valid UTF-8). One
such row must not stop sync for every device: a merge that sets aside applies everything else
of the batch and records each row it could not apply, whole (all its changes of the batch),
with the reason, in ``crsync_rejected``. The app lists them, retries them (after fixing the
schema, for instance with :meth:`crsync.Database.migrate`) or drops them.

Finding the bad rows costs nothing when there are none (the batch is applied in one go, inside
a savepoint); when some exist, the batch is split in halves, each half tried in its own
savepoint, down to single rows: O(k log n) attempts for k bad rows among n.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from .change import Change
from .errors import InvalidChangeError

if TYPE_CHECKING:
    from .database import Database

log = logging.getLogger(__name__)

DDL = (
    "CREATE TABLE IF NOT EXISTS crsync_rejected (tbl TEXT NOT NULL, pk BLOB NOT NULL, "
    "cid TEXT NOT NULL, val, col_version INTEGER NOT NULL, db_version INTEGER NOT NULL, "
    "site_id BLOB NOT NULL, cl INTEGER NOT NULL, seq INTEGER NOT NULL, reason TEXT NOT NULL, "
    "at REAL NOT NULL, PRIMARY KEY (tbl, pk, cid, site_id, col_version, cl)) WITHOUT ROWID"
)

# Errors that belong to the rows being merged, not to the database or the connection:
# constraint failures and datatype mismatches (IntegrityError), keys SQLite cannot bind
# (UnicodeEncodeError is a ValueError), malformed keys (InvalidChangeError).
ROW_ERRORS: tuple[type[BaseException], ...] = (
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    InvalidChangeError,
    ValueError,
    OverflowError,
)


@attrs.frozen
class RejectedChange:
    """A change set aside because this database could not apply it."""

    change: Change
    reason: str
    at: float  # when it was set aside (seconds since the epoch)


def merge_or_set_aside(
    db: Database,
    conn: sqlite3.Connection,
    batch: list[Change],
    merge: Callable[[sqlite3.Connection, list[Change]], int],
) -> tuple[int, int]:
    """Merge ``batch`` inside the caller's write transaction, setting aside rows that cannot
    be applied. Returns ``(wins, rejected)``."""
    if not batch:
        return 0, 0
    ok, wins, error = _attempt(db, conn, batch, merge)
    if ok:
        return wins, 0
    groups = _row_groups(batch)
    wins, rejected, first = _split(db, conn, groups, merge)
    log.warning(
        "crsync.merge.set_aside rows=%d changes=%d first_reason=%s",
        len(first.rows),
        rejected,
        first.reason or _describe(error),
    )
    return wins, rejected


@attrs.define
class _Seen:
    reason: str = ""
    rows: set[tuple[str, bytes]] = attrs.Factory(set)


def _attempt(
    db: Database,
    conn: sqlite3.Connection,
    batch: list[Change],
    merge: Callable[[sqlite3.Connection, list[Change]], int],
) -> tuple[bool, int, BaseException | None]:
    conn.execute("SAVEPOINT crsync_rows")
    try:
        wins = merge(conn, batch)
    except ROW_ERRORS as exc:
        conn.execute("ROLLBACK TO crsync_rows")
        conn.execute("RELEASE crsync_rows")
        db._forget_site_cache()  # ordinals of the rolled-back sites are gone
        return False, 0, exc
    conn.execute("RELEASE crsync_rows")
    return True, wins, None


def _split(
    db: Database,
    conn: sqlite3.Connection,
    groups: list[list[Change]],
    merge: Callable[[sqlite3.Connection, list[Change]], int],
    seen: _Seen | None = None,
) -> tuple[int, int, _Seen]:
    seen = seen or _Seen()
    if len(groups) == 1:
        rows = groups[0]
        ok, wins, error = _attempt(db, conn, rows, merge)
        if ok:
            return wins, 0, seen
        reason = _describe(error)
        seen.reason = seen.reason or reason
        seen.rows.add((rows[0].table, rows[0].pk))
        _set_aside(conn, rows, reason)
        return 0, len(rows), seen
    wins = rejected = 0
    mid = len(groups) // 2
    for half in (groups[:mid], groups[mid:]):
        flat = [c for g in half for c in g]
        ok, w, _ = _attempt(db, conn, flat, merge)
        if ok:
            wins += w
            continue
        w, r, seen = _split(db, conn, half, merge, seen)
        wins += w
        rejected += r
    return wins, rejected, seen


def _row_groups(batch: Sequence[Change]) -> list[list[Change]]:
    groups: dict[tuple[str, bytes], list[Change]] = {}
    for c in batch:
        groups.setdefault((c.table, c.pk), []).append(c)
    return list(groups.values())


def _describe(error: BaseException | None) -> str:
    if error is None:
        return ""
    text = str(error)
    return f"{type(error).__name__}: {text}"[:500]


def _set_aside(conn: sqlite3.Connection, rows: list[Change], reason: str) -> None:
    now = time.time()
    conn.executemany(
        "INSERT OR REPLACE INTO crsync_rejected VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(*c.as_tuple(), reason, now) for c in rows],
    )


def listed(conn: sqlite3.Connection, table: str | None) -> list[RejectedChange]:
    """The changes set aside (of one table, or all), oldest first."""
    try:
        rows = conn.execute(
            "SELECT tbl, pk, cid, val, col_version, db_version, site_id, cl, seq, reason, at "
            "FROM crsync_rejected WHERE ?1 IS NULL OR tbl = ?1 ORDER BY at, tbl, pk, cid",
            (table,),
        ).fetchall()
    except sqlite3.OperationalError:  # a read-only file from before this table existed
        return []
    return [RejectedChange(Change(*r[:9]), r[9], r[10]) for r in rows]


def take(conn: sqlite3.Connection, table: str | None) -> list[Change]:
    """Remove the changes set aside (of one table, or all) and return them."""
    out = [r.change for r in listed(conn, table)]
    conn.execute("DELETE FROM crsync_rejected WHERE ?1 IS NULL OR tbl = ?1", (table,))
    return out
