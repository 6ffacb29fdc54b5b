"""Peer positions and full-push requests: the storage side of :class:`crsync.Peer`.

This module alone reads and writes ``crsync_peers`` (its DDL is :data:`DDL`, which
:class:`crsync.Database` runs with the rest of the metadata). One row per peer and direction:

* ``push``: the last local version the relay acknowledged;
* ``pull``: the relay version merged here (recorded in the same transaction as the merge),
  with ``local``: the database's db_version right after that merge;
* ``horizon``: the relay's horizon as last heard (``updated_at``: when), see
  :func:`apply_horizon`;
* ``mark``: the compaction mark ``(mark_relay, mark_local)``: a pull position recorded earlier
  (``version``) and its ``local``; ``compacted``: where the next compaction scan starts.

A peer is keyed by its relay URL and store. The rows carry the relay's epoch; positions from
another epoch are not positions at all (:func:`load` returns zeros then).

It also owns ``crsync_staged``: the parts of a multi-part catch-up unit received so far
(docs/protocol.md rule 10), kept durably so that a dropped connection resumes the unit instead
of receiving it again (:func:`stage`, :func:`staged`, :func:`drop_staged`, and
:func:`merge_and_record` with ``staged=True``).

The functions take a :class:`~crsync.database.Database` and run their own transaction on its
connection: they are crsync's internal storage API for its sync layer (``peer.py`` and the
CLI), not part of the public API.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import attrs

from . import identity, merge, versions
from . import protocol as p
from .change import COLLECTED_SITE, SENTINEL, Change, validate_changes
from .device_session import StagedUnit
from .pack import pack_pk

if TYPE_CHECKING:
    from .database import Database

PUSH = "push"
PULL = "pull"
HORIZON = "horizon"
MARK = "mark"
COMPACTED = "compacted"
_POSITIONS = (PUSH, PULL)

DDL = (
    "CREATE TABLE IF NOT EXISTS crsync_peers (peer TEXT NOT NULL, event TEXT NOT NULL, "
    "epoch TEXT NOT NULL DEFAULT '', version INTEGER NOT NULL, "
    "updated_at REAL, local INTEGER, PRIMARY KEY (peer, event))"
)
STAGED_DDL = (
    "CREATE TABLE IF NOT EXISTS crsync_staged (peer TEXT NOT NULL, part INTEGER NOT NULL, "
    "epoch TEXT NOT NULL, base INTEGER NOT NULL, upto INTEGER NOT NULL, "
    "cells INTEGER NOT NULL, last_tbl TEXT NOT NULL, last_pk BLOB NOT NULL, "
    "last_cid TEXT NOT NULL, frame BLOB NOT NULL, PRIMARY KEY (peer, part))"
)

_NOW = "(julianday('now') - 2440587.5) * 86400.0"


def migrate_format_1(conn: sqlite3.Connection) -> None:
    """Bring ``crsync_peers`` of a format-1 file to format 2 (the ``local`` column);
    ``crsync_staged`` is created by :data:`STAGED_DDL` like every metadata table."""
    cols = {r[1] for r in conn.execute("PRAGMA table_info(crsync_peers)")}
    if "local" not in cols:
        conn.execute("ALTER TABLE crsync_peers ADD COLUMN local INTEGER")


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
            "SELECT peer, event, epoch, version, updated_at FROM crsync_peers "
            "WHERE event IN (?, ?) ORDER BY peer, event",
            _POSITIONS,
        )
    ]


def _record(
    conn: sqlite3.Connection,
    key: str,
    event: str,
    epoch: str,
    version: int,
    local: int | None = None,
) -> None:
    conn.execute(
        "INSERT INTO crsync_peers (peer, event, epoch, version, updated_at, local) "
        f"VALUES (?, ?, ?, ?, {_NOW}, ?) "
        "ON CONFLICT (peer, event) DO UPDATE SET epoch = excluded.epoch, "
        "version = excluded.version, updated_at = excluded.updated_at, local = excluded.local",
        (key, event, epoch, version, local),
    )


def record(db: Database, key: str, event: str, epoch: str, version: int) -> None:
    """Record ``version`` as the position of ``event`` with peer ``key``, in its own
    transaction."""
    with db._write() as conn:
        _record(conn, key, event, epoch, version)


def reset(db: Database, key: str, epoch: str) -> None:
    """Start over with peer ``key`` in ``epoch``: both positions back to 0, atomically; the
    compaction mark and a staged unit of the old epoch are dropped too."""
    with db._write() as conn:
        _record(conn, key, PUSH, epoch, 0)
        _record(conn, key, PULL, epoch, 0, 0)
        conn.execute(
            "DELETE FROM crsync_peers WHERE peer = ? AND event IN (?, ?)", (key, MARK, COMPACTED)
        )
        conn.execute("DELETE FROM crsync_staged WHERE peer = ?", (key,))


def merge_and_record(
    db: Database,
    changes: list[Change],
    key: str,
    epoch: str,
    version: int,
    *,
    staged: bool = False,
    held: list[Change] | None = None,
) -> tuple[int, int]:
    """Merge a unit from the relay and record the pull position, in one transaction. Rows this
    database cannot apply are set aside (``db.rejected_changes()``), never fatal.

    ``staged``: ``changes`` is the last part of a unit whose earlier parts were staged
    (:func:`stage`): the staged parts and ``changes`` merge as one unit, and the staging is
    cleared in the same transaction. ``held``: the changes of every staged part, in order,
    still in the caller's memory (staged by this process since the unit began): merged
    instead of decoding the staged frames again.

    Returns:
        ``(wins, rejected)`` as :meth:`Database.merge_setting_aside`.
    """
    with db._write() as conn:
        if staged:
            parts = list(held) if held is not None else _staged_changes(conn, key, epoch, version)
            parts.extend(changes)
            changes = parts
            conn.execute("DELETE FROM crsync_staged WHERE peer = ?", (key,))
        batch = validate_changes(changes)
        db._refresh()
        wins, rejected = merge.merge_setting_aside_locked(db, conn, batch) if batch else (0, 0)
        local = conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0]
        _record(conn, key, PULL, epoch, version, local)
    return wins, rejected


# ---------------------------------------------------------------------- staged units


def stage(
    db: Database, key: str, epoch: str, part: p.Changes, frame: bytes | None = None
) -> None:
    """Keep one part (``more`` true) of a catch-up unit durably, in its own transaction. Every
    staged part of ``key`` belongs to the same unit: parts of another unit are dropped first.
    ``frame``: the part as received (its encoding), kept as it is instead of encoding it
    again."""
    if not part.changes:
        return
    if frame is None:
        frame = p.encode(part)
    last = part.changes[-1]
    with db._write() as conn:
        conn.execute(
            "DELETE FROM crsync_staged WHERE peer = ? AND (epoch <> ? OR base <> ? OR upto <> ?)",
            (key, epoch, part.base, part.upto),
        )
        conn.execute(
            "INSERT INTO crsync_staged VALUES (?, (SELECT coalesce(max(part), 0) + 1 FROM "
            "crsync_staged WHERE peer = ?), ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                key,
                epoch,
                part.base,
                part.upto,
                len(part.changes),
                last.table,
                last.pk,
                last.cid,
                frame,
            ),
        )


def staged(db: Database, key: str) -> StagedUnit | None:
    """The unit staged for peer ``key``, or None."""
    with db._read() as conn:
        row = conn.execute(
            "SELECT epoch, base, upto, count(*), sum(cells), max(part) FROM crsync_staged "
            "WHERE peer = ? GROUP BY epoch, base, upto",
            (key,),
        ).fetchall()
        if len(row) != 1:
            return None
        epoch, base, upto, _parts, cells, top = row[0]
        t, pk, cid = conn.execute(
            "SELECT last_tbl, last_pk, last_cid FROM crsync_staged WHERE peer = ? AND part = ?",
            (key, top),
        ).fetchone()
    return StagedUnit(epoch, base, upto, cells, (t, pk, cid))


def drop_staged(db: Database, key: str) -> None:
    """Forget the unit staged for peer ``key`` (the relay cannot continue it)."""
    with db._write() as conn:
        conn.execute("DELETE FROM crsync_staged WHERE peer = ?", (key,))


def _staged_changes(conn: sqlite3.Connection, key: str, epoch: str, upto: int) -> list[Change]:
    out: list[Change] = []
    for (frame,) in conn.execute(
        "SELECT frame FROM crsync_staged WHERE peer = ? AND epoch = ? AND upto = ? ORDER BY part",
        (key, epoch, upto),
    ):
        msg = p.decode(frame, max(len(frame), p.DEFAULT_MAX_FRAME))
        assert isinstance(msg, p.Changes)
        out.extend(msg.changes)
    return out


# ---------------------------------------------------------------------- the horizon


def apply_horizon(db: Database, key: str, horizon: int) -> int:
    """The relay of peer ``key`` announced ``horizon`` (docs/concepts.md, "Tombstones and the
    horizon"): record it and, if it reached the compaction mark, compact this database's
    tombstones the mark covers; then move the mark to the latest recorded pull position.

    The mark ``(mark_relay, mark_local)`` is a pull position recorded earlier and the last
    version sealed when the mark was set (the open version is sealed first, so every merge
    up to ``mark_relay`` stamped at most ``mark_local`` and every later one more). Every
    tombstone merged from relay versions up to ``mark_relay`` has ``sd <= mark_local``; once
    ``horizon >= mark_relay`` every device has
    them and the relay keeps them as collected tombstones, so the tombstones with
    ``sd <= mark_local`` are compacted: ``sd``, ``ss``, ``sq`` and ``dbv`` set to NULL (the
    row keeps its key and ``cl``, which is all the merge and the insert trigger read of a
    deleted row). This database's own tombstones the relay has not acknowledged (site ordinal
    0, ``sd`` above the push position) are kept. A horizon of another epoch than the recorded
    positions', or one below the recorded horizon, changes nothing.

    Returns:
        how many tombstones were compacted.
    """
    if type(horizon) is not int or horizon < 0:
        raise ValueError(f"horizon must be a non-negative integer, not {horizon!r}")
    db._no_txn("apply the relay's horizon")
    sealed = versions.seal(db)
    with db._write() as conn:
        rows = {
            event: (epoch, version, local)
            for event, epoch, version, local in conn.execute(
                "SELECT event, epoch, version, local FROM crsync_peers WHERE peer = ?", (key,)
            )
        }
        push, pull = rows.get(PUSH), rows.get(PULL)
        if push is None or pull is None or push[0] != pull[0] or not pull[0]:
            return 0
        epoch = pull[0]
        old = rows.get(HORIZON)
        if old is not None and old[0] == epoch and old[1] > horizon:
            return 0  # never moves back
        _record(conn, key, HORIZON, epoch, horizon)
        mark = rows.get(MARK)
        if mark is None or mark[0] != epoch:
            mark = (epoch, 0, 0)
        if horizon < mark[1]:
            return 0
        done = rows.get(COMPACTED)
        lo = done[1] if done is not None and done[0] == epoch else 0
        mark_local = mark[2] or 0
        push_upto = push[1]
        n = 0
        if mark_local >= lo and mark_local > 0:
            db._refresh()
            for tr in db._tracked.values():
                n += conn.execute(
                    f"UPDATE {tr.meta} SET sd = NULL, ss = NULL, sq = NULL, dbv = NULL "
                    "WHERE dbv >= ? AND dbv <= ? AND cl % 2 = 0 AND NOT (ss = 0 AND sd > ?)",
                    (lo, mark_local, push_upto),
                ).rowcount
            _record(conn, key, COMPACTED, epoch, min(mark_local, push_upto))
        _record(conn, key, MARK, epoch, pull[1], sealed)
    return n


def horizon(db: Database) -> tuple[int, float | None] | None:
    """``(horizon, heard_at)`` of the relay horizon heard most recently (of any peer), or
    None if no relay announced one."""
    row = db.conn.execute(
        "SELECT version, updated_at FROM crsync_peers WHERE event = ? "
        "ORDER BY updated_at DESC LIMIT 1",
        (HORIZON,),
    ).fetchone()
    return None if row is None else (int(row[0]), row[1])


def collected_tombstones(db: Database) -> list[Change]:
    """Every compacted tombstone as a collected tombstone (docs/protocol.md rule 11):
    ``(table, pk, "-1", None, cl, 0, COLLECTED_SITE, cl, 0)``. A full push sends them first,
    so that a relay rebuilt from the devices gets them back."""
    out: list[Change] = []
    with db._read() as conn:
        db._refresh()
        for name, tr in db._tracked.items():
            pks = ", ".join(f"p{j}" for j in range(tr.npk))
            for row in conn.execute(
                f"SELECT {pks}, cl FROM {tr.meta} WHERE dbv IS NULL"
            ):
                out.append(
                    Change(
                        name,
                        pack_pk(row[:-1]),
                        SENTINEL,
                        None,
                        row[-1],
                        0,
                        COLLECTED_SITE,
                        row[-1],
                        0,
                    )
                )
    return out


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
