"""File identity: notice that a database file is a copy, so two replicas never share a site id.

Copying ``app.db`` to a second machine is how users start a second device. The copy carries
the original's site id; two replicas with one site id never converge (each believes the other's
changes are its own). So :class:`crsync.Database` records, beside the site id, the identity of
the file it lives in: its device and inode numbers (``os.stat``), plus its path for the log.
A copy is a new file with a new inode; when the recorded identity does not match the file
opened, the file is a copy (or was restored or replaced by one) and moves to a new site id,
with one full push, exactly as :meth:`crsync.Database.reset_site`.

What keeps the identity: the app restarting, WAL checkpoints, ``VACUUM`` (it rewrites the
file in place), a rename or move within one file system (same inode: the file is still the
one replica, so it keeps its site id), a restore that overwrites the file in place (the Peer's
relay check covers that one). What changes it, and resets the site: a copy (``cp``, a file
manager, a sync folder, a backup tool restoring a new file), a move to another file system, a
tool that saves by writing a new file and renaming it over the old one. A reset the file did
not need costs one full push of its changes, never data: the old site id's changes stay in the
file and are pushed again; the relay already holding them is harmless.

A device number that changes while inode and path stay (network or container file systems
that are mounted again) is not taken for a copy. Not detectable this way: a whole-disk clone
(same device, inode and path on two machines); run ``crsync reset-site`` on the clone.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sqlite3
import uuid

import attrs

log = logging.getLogger(__name__)

IDENTITY_KEY = "file_identity"
FULL_PUSH_KEY = "full_push_pending"


@attrs.frozen
class FileIdentity:
    """Where a database file lives: its device and inode numbers and its absolute path."""

    dev: int
    ino: int
    path: str

    def to_json(self) -> str:
        """The identity as stored in ``crsync_meta``."""
        return json.dumps({"dev": self.dev, "ino": self.ino, "path": self.path}, sort_keys=True)

    @classmethod
    def from_json(cls, text: object) -> FileIdentity | None:
        """Parse a stored identity; None if it is missing or unreadable."""
        if not isinstance(text, str):
            return None
        try:
            d = json.loads(text)
            return cls(int(d["dev"]), int(d["ino"]), str(d["path"]))
        except (ValueError, KeyError, TypeError):
            return None

    def same_file(self, other: FileIdentity) -> bool:
        """True if both name the same file: same inode, and the same device or the same path
        (a file system mounted again may get another device number)."""
        if self.ino != other.ino:
            return False
        return self.dev == other.dev or self.path == other.path


def of_file(path: str) -> FileIdentity | None:
    """The identity of the file at ``path`` now; None if it cannot be read (or has no inode)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_ino == 0:  # file systems without file ids
        return None
    return FileIdentity(int(st.st_dev), int(st.st_ino), os.path.realpath(path))


def stored(conn: sqlite3.Connection) -> FileIdentity | None:
    """The identity recorded in the database, if any."""
    row = conn.execute("SELECT value FROM crsync_meta WHERE key = ?", (IDENTITY_KEY,)).fetchone()
    return None if row is None else FileIdentity.from_json(row[0])


def record(conn: sqlite3.Connection, ident: FileIdentity) -> None:
    """Record the file identity (inside the caller's write transaction)."""
    conn.execute(
        "INSERT OR REPLACE INTO crsync_meta (key, value) VALUES (?, ?)",
        (IDENTITY_KEY, ident.to_json()),
    )


def mark_full_push(conn: sqlite3.Connection) -> None:
    """Ask the next :class:`crsync.Peer` session to push the changes of every site once (set
    with a site reset, in the same transaction; cleared by the Peer once that push is
    acknowledged). The value is a fresh token, so a Peer clears only the request it served."""
    conn.execute(
        "INSERT OR REPLACE INTO crsync_meta (key, value) VALUES (?, ?)",
        (FULL_PUSH_KEY, uuid.uuid4().hex),
    )


def full_push_pending(conn: sqlite3.Connection) -> str | None:
    """The token of a full push a site reset asked for and no Peer completed yet, or None."""
    row = conn.execute("SELECT value FROM crsync_meta WHERE key = ?", (FULL_PUSH_KEY,)).fetchone()
    return None if row is None else str(row[0])


def clear_full_push(conn: sqlite3.Connection, token: str) -> None:
    """Forget the full-push request ``token`` (a Peer pushed every site's changes since)."""
    conn.execute("DELETE FROM crsync_meta WHERE key = ? AND value = ?", (FULL_PUSH_KEY, token))


SITE_KEY_PREFIX = "site_key:"


def site_key(conn: sqlite3.Connection, site: bytes) -> bytes | None:
    """The secret this file keeps for ``site`` (None if none was made yet).

    A :class:`crsync.Peer` sends it in its hello; the relay binds the site id to it on first
    use, so no other client can speak for this site (acknowledge its writes, read its
    position). Keyed by the site id: a site reset (a copied or restored file) makes a new key.
    """
    row = conn.execute(
        "SELECT value FROM crsync_meta WHERE key = ?", (SITE_KEY_PREFIX + site.hex(),)
    ).fetchone()
    return None if row is None else bytes(row[0])


def new_site_key(conn: sqlite3.Connection, site: bytes) -> bytes:
    """The site's key, made now if it has none (inside a write transaction)."""
    conn.execute(
        "INSERT OR IGNORE INTO crsync_meta (key, value) VALUES (?, ?)",
        (SITE_KEY_PREFIX + site.hex(), secrets.token_bytes(32)),
    )
    key = site_key(conn, site)
    assert key is not None
    return key
