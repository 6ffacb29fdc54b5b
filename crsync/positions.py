"""Peer positions and full-push requests: the storage side of :class:`crsync.Peer`.

This module alone reads and writes ``crsync_peers`` (its DDL is :data:`DDL`, which
:class:`crsync.Database` runs with the rest of the metadata). One row per peer and direction:

* ``push``: the last local version the relay acknowledged;
* ``pull``: the relay version merged here (recorded in the same transaction as the merge).

A peer is keyed by its relay URL and store. Both rows carry the relay's epoch; positions from
another epoch are not positions at all (:func:`load` returns zeros then).

The functions take a :class:`~crsync.database.Database` and run their own transaction on its
connection: they are crsync's internal storage API for its sync layer (``peer.py`` and the
CLI), not part of the public API.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import attrs

from . import identity, merge
from .change import Change, validate_changes

if TYPE_CHECKING:
    from .database import Database

PUSH = "push"
PULL = "pull"

DDL = (
    "CREATE TABLE IF NOT EXISTS crsync_peers (peer TEXT NOT NULL, event TEXT NOT NULL, "
    "epoch TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL, "
    "updated_at REAL, PRIMARY KEY (peer, event))"
)


@attrs.frozen
class Position:
    """One recorded position: ``version`` of ``event`` (push or pull) with ``peer``."""

    peer: str
    event: str
    epoch: str
    version: int
    updated_at: float | None  # seconds since the Unix epoch


def load(db: Database, key: str) -> tuple[str, int, int]:
    """``(epoch, push, pull)`` recorded for the peer ``key``; ``("", 0, 0)`` if its two rows
    do not share an epoch (or are missing)."""
    rows = {
        event: (epoch, version)
        for event, epoch, version in db.conn.execute(
            "SELECT event, epoch, version FROM crsync_peers WHERE peer = ?", (key,)
        )
    }
    push = rows.get(PUSH, ("", 0))
    pull = rows.get(PULL, ("", 0))
    epoch = push[0] if push[0] == pull[0] else ""
    return epoch, push[1] if epoch else 0, pull[1] if epoch else 0


def listed(db: Database) -> list[Position]:
    """Every recorded position, ordered by peer and event."""
    return [
        Position(*row)
        for row in db.conn.execute(
            "SELECT peer, event, epoch, version, updated_at FROM crsync_peers ORDER BY peer, event"
        )
    ]


def _record(conn: sqlite3.Connection, key: str, event: str, epoch: str, version: int) -> None:
    conn.execute(
        "INSERT INTO crsync_peers (peer, event, epoch, version, updated_at) "
        "VALUES (?, ?, ?, ?, (julianday('now') - 2440587.5) * 86400.0) "
        "ON CONFLICT (peer, event) DO UPDATE SET epoch = excluded.epoch, "
        "version = excluded.version, updated_at = excluded.updated_at",
        (key, event, epoch, version),
    )


def record(db: Database, key: str, event: str, epoch: str, version: int) -> None:
    """Record ``version`` as the position of ``event`` with peer ``key``, in its own
    transaction."""
    with db._write() as conn:
        _record(conn, key, event, epoch, version)


def reset(db: Database, key: str, epoch: str) -> None:
    """Start over with peer ``key`` in ``epoch``: both positions back to 0, atomically."""
    with db._write() as conn:
        _record(conn, key, PUSH, epoch, 0)
        _record(conn, key, PULL, epoch, 0)


def merge_and_record(
    db: Database, changes: list[Change], key: str, epoch: str, version: int
) -> tuple[int, int]:
    """Merge a unit from the relay and record the pull position, in one transaction. Rows this
    database cannot apply are set aside (``db.rejected_changes()``), never fatal.

    Returns:
        ``(wins, rejected)`` as :meth:`Database.merge_setting_aside`.
    """
    batch = validate_changes(changes)
    with db._write() as conn:
        db._refresh()
        wins, rejected = merge.merge_setting_aside_locked(db, conn, batch) if batch else (0, 0)
        _record(conn, key, PULL, epoch, version)
    return wins, rejected


def site_and_full_push(db: Database) -> tuple[bytes, str | None, bytes]:
    """The site id, a pending full-push request, and the site's key (made on first use)."""
    with db._read() as conn:
        site, token = db.site_id, identity.full_push_pending(conn)
        key = identity.site_key(conn, site)
    if key is None:
        with db._write() as conn:
            site, token = db.site_id, identity.full_push_pending(conn)
            key = identity.new_site_key(conn, site)
    return site, token, key


def clear_full_push(db: Database, token: str) -> None:
    """Forget the full-push request ``token`` (done), unless a newer one replaced it."""
    with db._write() as conn:
        identity.clear_full_push(conn, token)
