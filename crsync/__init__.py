"""crsync: multi-device sync for plain SQLite.

Capture with generated triggers, merge with cr-sqlite's CRDT rules (column-level
last-writer-wins, causal-length row existence), sync through a relay.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

from . import tracking
from .change import SENTINEL, Change
from .database import Database, MetadataStats, connect
from .errors import (
    AuthError,
    ConnectError,
    CrsyncError,
    InvalidChangeError,
    LocalStorageError,
    MissingExtraError,
    NotTrackedError,
    PackError,
    PeerFailedError,
    PeerStoppedError,
    ProtocolError,
    ReadOnlyError,
    RelayURLError,
    SchemaError,
    SchemaMismatchError,
    SyncError,
    SyncTimeoutError,
    UnsupportedDatabaseError,
)
from .ids import new_id, rekey
from .pack import pack_pk, unpack_pk
from .schema import schema_fingerprint as _schema_fingerprint

if TYPE_CHECKING:  # loaded on first use at run time (see __getattr__)
    from .sync_thread import SyncStatus, SyncThread

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def trigger_sql(conn: sqlite3.Connection, table: str, *, integer_keys: str | None = None) -> str:
    """The SQL that tracking ``table`` installs (metadata table and triggers); executes nothing.

    ``integer_keys`` is as for :meth:`Database.track`.

    Raises:
        SchemaError: the table cannot be replicated as declared.
    """
    return tracking.capture_script(conn, table, integer_keys=integer_keys)


def __getattr__(name: str) -> object:
    """``crsync.Peer``, ``crsync.PeerState``, ``crsync.PeerStats``, ``crsync.SyncThread`` and
    ``crsync.SyncStatus``, imported on first use (the sync layer pulls in anyio (and trio for
    ``SyncThread``), websockets and watchfiles, which the core does not need)."""
    if name in ("Peer", "PeerState", "PeerStats"):
        from . import peer

        return getattr(peer, name)
    if name in ("SyncThread", "SyncStatus"):
        from . import sync_thread

        return getattr(sync_thread, name)
    raise AttributeError(f"module 'crsync' has no attribute {name!r}")


def schema_fingerprint(conn: sqlite3.Connection, table: str) -> str:
    """Deterministic fingerprint of a table's replicated schema (name, pk, column set)."""
    return _schema_fingerprint(conn, table)


__all__ = [
    "SENTINEL",
    "AuthError",
    "Change",
    "ConnectError",
    "CrsyncError",
    "Database",
    "InvalidChangeError",
    "LocalStorageError",
    "MetadataStats",
    "MissingExtraError",
    "NotTrackedError",
    "PackError",
    "Peer",
    "PeerFailedError",
    "PeerState",
    "PeerStats",
    "PeerStoppedError",
    "ProtocolError",
    "ReadOnlyError",
    "RelayURLError",
    "SchemaError",
    "SchemaMismatchError",
    "SyncError",
    "SyncStatus",
    "SyncThread",
    "SyncTimeoutError",
    "UnsupportedDatabaseError",
    "connect",
    "new_id",
    "pack_pk",
    "rekey",
    "schema_fingerprint",
    "trigger_sql",
    "unpack_pk",
]
