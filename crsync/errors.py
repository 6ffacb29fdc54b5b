"""The crsync exception hierarchy: every error crsync raises on purpose is a ``CrsyncError``."""

from __future__ import annotations


class CrsyncError(Exception):
    """Base class of every error crsync raises on purpose."""


class SchemaError(CrsyncError):
    """A table cannot be replicated as it is declared, or schemas of two replicas disagree."""

    def __init__(self, table: str, problem: str) -> None:
        self.table = table
        self.problem = problem
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
