"""Which SQLite errors can pass on their own (retry later) and which retrying cannot fix.

Classified by the primary result code (``sqlite_errorcode & 0xff``, Python 3.11+), with the
message as a fallback for errors raised without a code:

* transient: ``SQLITE_BUSY`` and ``SQLITE_LOCKED`` (another connection or process holds a lock
  longer than the busy timeout), ``SQLITE_IOERR`` (a failing read or write: network file systems,
  a disk going to sleep, a file-size limit), ``SQLITE_FULL`` (disk full: space can come back),
  ``SQLITE_NOMEM``, ``SQLITE_INTERRUPT`` and ``SQLITE_PROTOCOL`` (a WAL lock race);
* everything else is permanent: ``SQLITE_CORRUPT``, ``SQLITE_NOTADB``, ``SQLITE_READONLY``,
  ``SQLITE_CANTOPEN``, ``SQLITE_CONSTRAINT``, ``SQLITE_ERROR`` (a missing table, bad SQL), ...
"""

from __future__ import annotations

import sqlite3

from .errors import CrsyncError, LocalStorageError

_TRANSIENT_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_INTERRUPT,
        sqlite3.SQLITE_PROTOCOL,
    }
)
_TRANSIENT_MESSAGES = (
    "database is locked",
    "database table is locked",
    "database schema is locked",
    "disk i/o error",
    "database or disk is full",
    "out of memory",
    "interrupted",
    "locking protocol",
)


def causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything behind it: causes, contexts and the members of exception groups
    (breadth first, each once)."""
    out: list[BaseException] = []
    todo = [exc]
    while todo:
        e = todo.pop(0)
        if any(e is x for x in out):
            continue
        out.append(e)
        if isinstance(e, BaseExceptionGroup):
            todo.extend(e.exceptions)
        if e.__cause__ is not None:
            todo.append(e.__cause__)
        if e.__context__ is not None:
            todo.append(e.__context__)
    return out


def sqlite_cause(exc: BaseException) -> sqlite3.Error | None:
    """The SQLite error behind ``exc`` (itself, a cause, a context or a group member), if any."""
    for e in causes(exc):
        if isinstance(e, sqlite3.Error):
            return e
    return None


def is_transient(exc: sqlite3.Error) -> bool:
    """True when retrying the operation later may succeed (locks, I/O errors, disk full)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _TRANSIENT_CODES
    text = str(exc).lower()
    return any(m in text for m in _TRANSIENT_MESSAGES)


def error_name(exc: sqlite3.Error) -> str:
    """``SQLITE_BUSY`` and so on, or the exception's class name when SQLite gave no code."""
    name = getattr(exc, "sqlite_errorname", None)
    return name if isinstance(name, str) else type(exc).__name__


def retry_reason(exc: Exception, failed: str) -> str:
    """What to report while retrying ``exc``, a transient SQLite error (``"local database
    unavailable (SQLITE_BUSY: ...)"``).

    Raises:
        CrsyncError: ``exc`` itself when it is one and retrying cannot fix it, else
            ``LocalStorageError("<failed>: <exc>")`` (``exc`` as its cause).
    """
    sq = sqlite_cause(exc)
    if sq is None or not is_transient(sq):
        if isinstance(exc, CrsyncError):
            raise exc
        raise LocalStorageError(f"{failed}: {exc}") from exc
    return f"local database unavailable ({error_name(sq)}: {sq})"
