"""The change feed: the changes recorded in sealed versions of this database.

:meth:`Database.changes` and :meth:`Database.changes_since` are :func:`changes_since`. The
other functions are crsync's internal storage API for live queries (:mod:`crsync.live`):
sealing, one consistent snapshot, which tracked tables changed between two versions, and
their changes. Sealing itself is :mod:`crsync.versions`.
"""

from __future__ import annotations

import contextlib
import operator
import sqlite3
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

from . import versions
from ._gc import gc_paused
from .change import SENTINEL, Change
from .errors import CrsyncError
from .pack import pack_pk

if TYPE_CHECKING:
    from .database import Database
    from .tracking import Tracked

_order_key = operator.attrgetter("db_version", "seq")


def seal(db: Database) -> int:
    """Seal the open version if it holds changes; return the last sealed version. Every write
    committed after this carries a higher version. Reloads the registry of tracked tables if
    the schema changed."""
    return versions.seal(db)


@contextlib.contextmanager
def snapshot(db: Database) -> Iterator[sqlite3.Connection]:
    """A read transaction on ``db.conn``: one consistent snapshot."""
    with db._read() as conn:
        yield conn


def tracked_names(db: Database) -> list[str]:
    """Names of the tracked tables as of the last :func:`seal` (no schema check)."""
    return list(db._tracked)


def changed_tables(db: Database, since: int, upto: int) -> set[str]:
    """Tracked tables (as named in :func:`tracked_names`) with changes at a version in
    ``(since, upto]``."""
    conn = db.conn
    return {
        name
        for name, tr in db._tracked.items()
        if conn.execute(
            f"SELECT 1 FROM {tr.meta} WHERE dbv > ? AND dbv <= ? LIMIT 1", (since, upto)
        ).fetchone()
        is not None
    }


def read_changes(db: Database, since: int, upto: int, tables: Collection[str]) -> list[Change]:
    """The changes of ``tables`` (named as in :func:`tracked_names`) at a version in
    ``(since, upto]``, table by table, unsorted. Call inside :func:`snapshot`."""
    db._sync_site()
    changes: list[Change] = []
    for name, tr in db._tracked.items():
        if name in tables:
            read_table(db, tr, since, upto, -1, changes)
    return changes


def read_table(
    db: Database, tr: Tracked, since: int, upto: int, excl: int, out: list[Change]
) -> None:
    """Append to ``out`` the changes of one table at a version in ``(since, upto]``, leaving
    out those of the site with ordinal ``excl`` (-1: none)."""
    name = tr.info.name
    npk = tr.npk
    cur = [(c.name, tr.slots[c.name]) for c in tr.info.columns if c.name in tr.slots]
    ncur = len(cur)
    cbase = npk + 5
    vbase = cbase + 4 * ncur
    site_of = db._site_of
    sites: dict[int, bytes] = {}
    append = out.append
    for row in db.conn.execute(tr.read_sql, (since, upto)):
        pkb = pack_pk(row[:npk])
        cl = row[npk]
        sd = row[npk + 1]
        if sd is not None and sd > since:
            so = row[npk + 2]
            if so != excl:
                site = sites.get(so) or sites.setdefault(so, site_of(so))
                append(Change(name, pkb, SENTINEL, None, cl, sd, site, cl, row[npk + 3]))
        for j in range(ncur):
            k = cbase + 4 * j
            d = row[k + 1]
            if d is None or d <= since:
                continue
            so = row[k + 2]
            if so == excl:
                continue
            site = sites.get(so) or sites.setdefault(so, site_of(so))
            append(Change(name, pkb, cur[j][0], row[vbase + j], row[k], d, site, cl, row[k + 3]))


def changes_since(
    db: Database, since: int = 0, exclude_site: bytes | None = None
) -> tuple[int, list[Change]]:
    """Like :meth:`changes`, also returning the version to use as the next ``since``."""
    if type(since) is not int or since < 0:
        raise CrsyncError(f"since must be a non-negative integer, not {since!r}")
    if exclude_site is not None and (
        not isinstance(exclude_site, bytes) or len(exclude_site) != 16
    ):
        raise CrsyncError("exclude_site must be a 16-byte site id")
    db._no_txn("read changes")
    upto = versions.seal(db)
    out: list[Change] = []
    if upto <= since:
        return upto, out
    with db._read():
        db._sync_site()
        excl = -1
        if exclude_site is not None:
            if exclude_site == db.site_id:  # read from the file
                excl = 0
            else:
                row = db.conn.execute(
                    "SELECT ordinal FROM crsync_sites WHERE site_id = ?", (exclude_site,)
                ).fetchone()
                excl = row[0] if row else -1
        with gc_paused():
            for tr in db._tracked.values():
                read_table(db, tr, since, upto, excl, out)
            out.sort(key=_order_key)
    return upto, out
