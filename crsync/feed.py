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
from .pack import SqlValue, pack_pk

if TYPE_CHECKING:
    from .database import Database
    from .tracking import Tracked

_order_key = operator.itemgetter(5, 8)  # (db_version, seq) of a Change


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
            # no upper bound on dbv: see read_table (a row written again after upto still
            # holds records of (since, upto])
            f"SELECT 1 FROM {tr.meta} WHERE dbv > ? LIMIT 1",
            (since,),
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
    out those of the site with ordinal ``excl`` (-1: none).

    One row of SQL per replicated row; each cell becomes one :class:`Change` built straight
    from the row's fields (``tuple.__new__``: no per-field Python work). Strings and site ids
    are shared between the changes, not copied."""
    name = tr.info.name
    npk = tr.npk
    cells = tr.cell_layout()
    site_of = db._site_of
    sites: dict[int, bytes] = {}
    append = out.append
    new = tuple.__new__
    if npk == 1:
        pack_one = _pack_one
        key_of = None
    else:
        pack_one = None
        key_of = operator.itemgetter(*range(npk))
    i_cl, i_sd, i_ss, i_sq = npk, npk + 1, npk + 2, npk + 3
    # Rows are selected by ``dbv > since`` with no upper bound, and each record by its own
    # version in ``(since, upto]``: a write committed after ``upto`` was sealed (by another
    # connection, before this read's snapshot) moves a row's ``dbv`` past ``upto`` but keeps
    # the clocks of the cells it did not write, which belong to this read: bounding ``dbv``
    # by ``upto`` lost them for good (the next read starts after ``upto``).
    for row in db.conn.execute(tr.read_sql, (since,)):
        pkb = pack_one(row[0]) if pack_one is not None else pack_pk(key_of(row))  # type: ignore[misc]
        cl = row[i_cl]
        sd = row[i_sd]
        if sd is not None and since < sd <= upto:
            so = row[i_ss]
            if so != excl:
                site = sites.get(so) or sites.setdefault(so, site_of(so))
                append(new(Change, (name, pkb, SENTINEL, None, cl, sd, site, cl, row[i_sq])))
        for cid, k, vi in cells:
            d = row[k + 1]
            if d is None or d <= since or d > upto:
                continue
            so = row[k + 2]
            if so == excl:
                continue
            site = sites.get(so) or sites.setdefault(so, site_of(so))
            append(new(Change, (name, pkb, cid, row[vi], row[k], d, site, cl, row[k + 3])))


def _pack_one(v: SqlValue) -> bytes:
    """:func:`pack_pk` of a one-column key (inlined fast path for a non-negative integer)."""
    if type(v) is int and 0 <= v <= _I64_MAX:
        n = (v.bit_length() + 7) >> 3
        return _INT_HEAD[n] + v.to_bytes(n, "big")
    return pack_pk((v,))


_I64_MAX = (1 << 63) - 1
_INT_HEAD = [bytes((1, (n << 3) | 1)) for n in range(9)]


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
