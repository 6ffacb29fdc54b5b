"""The crsync exception hierarchy: every error crsync raises on purpose is a ``CrsyncError``;
and the exit statuses both command-line tools (``crsync``, ``crsync-relay``) end with."""

from __future__ import annotations

import enum


class ExitStatus(enum.IntEnum):
    """Exit statuses of ``crsync`` and ``crsync-relay`` (one table for both)."""

    OK = 0
    ERROR = 1
    """The command could not do its job (no such file or store, a relay serves the directory,
    the port is taken, a refused token, ...)."""
    USAGE = 2
    """Bad options, arguments, environment or configuration (click's own usage errors too)."""


class CrsyncError(Exception):
    """Base class of every error crsync raises on purpose."""


class SchemaError(CrsyncError):
    """A table cannot be replicated as it is declared, or schemas of two replicas disagree.

    ``problems`` lists every problem found (``track`` reports them all at once); ``problem``
    is their text as one string.
    """

    def __init__(self, table: str, problem: str, problems: list[str] | None = None) -> None:
        self.table = table
        self.problem = problem
        self.problems: list[str] = list(problems) if problems else [problem]
        super().__init__(f"table {table!r}: {problem}")


class NotTrackedError(CrsyncError):
    """An operation needs a replicated table and the table is not tracked."""


class InvalidChangeError(CrsyncError):
    """A change (or a batch of them) is malformed; nothing of the batch was applied."""


class PackError(InvalidChangeError):
    """A packed primary-key blob does not decode, or values cannot be packed."""


class ReadOnlyError(CrsyncError):
    """A write (track, migrate, merge, reset_site) on a database opened read-only."""


class SyncError(CrsyncError):
    """Base class of errors raised by the sync layer (peer, protocol, relay)."""


class ProtocolError(SyncError):
    """The other side sent something that breaks the wire protocol."""

    def __init__(self, code: str, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"{code}: {reason}")


class AuthError(SyncError):
    """The relay refused the credentials (invalid, expired or out-of-scope token)."""


class SchemaMismatchError(SyncError):
    """The relay (or another peer) has an incompatible schema for a replicated table."""


# ---------------------------------------------------------------- peer lifecycle (issue 9)


class RelayURLError(SyncError):
    """The relay URL cannot be used (bad scheme, host or port); raised by ``Peer(...)``."""


class ConnectError(SyncError):
    """The relay cannot be reached for a reason retrying cannot fix: a host name that can never
    resolve, a TLS certificate that does not verify, ``wss://`` to a relay without TLS."""


class LocalStorageError(SyncError):
    """The peer's local database failed in a way retrying cannot fix (corrupt, read-only, ...).

    Transient failures (locked, I/O error, disk full) are retried and never raise this.
    """


class PeerFailedError(SyncError):
    """The peer stopped on an unexpected error (a bug or a failing ``on_progress`` callback);
    the original exception is the ``__cause__``."""


class PeerStoppedError(SyncError):
    """A peer method needs the peer running (inside ``async with``) and it is not."""


class SyncTimeoutError(SyncError):
    """``Peer.wait_synced(timeout=...)`` gave up; the message says the state and why."""

    def __init__(self, message: str, state: str, reason: str | None) -> None:
        self.state = state
        self.reason = reason
        super().__init__(message)


# ---------------------------------------------------------------- integrations (crsync.contrib)


class UnsupportedDatabaseError(CrsyncError):
    """An ORM engine, connection or settings entry names a database crsync cannot sync: not
    SQLite, or in memory (nothing another device could sync with). Raised by ``crsync.contrib``."""


class MissingExtraError(CrsyncError, ImportError):
    """A ``crsync.contrib`` module needs a library that is not installed; the message names the
    extra that installs it (``pip install 'crsync[sqlalchemy]'``)."""
