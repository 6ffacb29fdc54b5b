"""Every SQLite storage class survives capture -> changes() -> merge() -> table exactly."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from core_helpers import SITE_A, SITE_B, open_db

import crsync

VALUES: list[Any] = [
    -(1 << 63),
    (1 << 63) - 1,
    0,
    -1,
    0.0,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    math.inf,
    -math.inf,
    0.1,
    "",
    "plain",
    "nul\x00inside",
    "\x00",
    "emoji \U0001f600 and \u00e9\u0301 and \u65e5\u672c",
    "\U0010ffff",
    b"",
    b"\x00",
    bytes(range(256)),
    None,
]


def pair(decl: str = "") -> tuple[crsync.Database, crsync.Database]:
    out = []
    for site in (SITE_A, SITE_B):
        db = open_db(site=site)
        db.conn.execute(f"CREATE TABLE v(id INTEGER PRIMARY KEY NOT NULL, x {decl})")
        db.track("v", integer_keys="app-assigned")
        out.append(db)
    return out[0], out[1]


def exact(conn: Any, sql: str, *args: Any) -> list[tuple[str, Any]]:
    out = []
    for v, t in conn.execute(sql, args):
        out.append((t, struct.pack(">d", v) if isinstance(v, float) else v))
    return out


def test_every_storage_class_round_trips_exactly() -> None:
    a, b = pair()
    a.conn.executemany("INSERT INTO v VALUES(?, ?)", list(enumerate(VALUES)))
    assert b.merge(a.changes()) == len(VALUES)
    q = "SELECT x, typeof(x) FROM v ORDER BY id"
    assert exact(b.conn, q) == exact(a.conn, q)
    assert exact(b.conn, "SELECT x, typeof(x) FROM v WHERE id = 5") == [
        ("real", struct.pack(">d", -0.0))
    ]
    assert len(exact(b.conn, q)) == len(VALUES)


def test_values_round_trip_when_updated_too() -> None:
    a, b = pair()
    a.conn.executemany("INSERT INTO v VALUES(?, 'seed')", [(i,) for i in range(len(VALUES))])
    b.merge(a.changes())
    cur = a.db_version
    a.conn.executemany("UPDATE v SET x = ? WHERE id = ?", [(v, i) for i, v in enumerate(VALUES)])
    b.merge(a.changes(since=cur))
    q = "SELECT x, typeof(x) FROM v ORDER BY id"
    assert exact(b.conn, q) == exact(a.conn, q)


def test_values_as_primary_keys_round_trip() -> None:
    a, b = (open_db(site=s) for s in (SITE_A, SITE_B))
    for db in (a, b):
        db.conn.execute("CREATE TABLE k(id PRIMARY KEY NOT NULL, n) WITHOUT ROWID")
        db.track("k")
    # 0.0 and -0.0 are the same key for SQLite; NULL cannot be a key
    keys = [v for v in VALUES if v is not None and not (isinstance(v, float) and v == 0)]
    a.conn.executemany("INSERT INTO k VALUES(?, ?)", [(k, i) for i, k in enumerate(keys)])
    b.merge(a.changes())
    q = "SELECT id, typeof(id) FROM k ORDER BY n"
    assert exact(b.conn, q) == exact(a.conn, q)


@pytest.mark.parametrize("size", [0, 1, 1000, 10 * 1024 * 1024])
def test_blobs_round_trip(size: int) -> None:
    a, b = pair("BLOB")
    blob = bytes(i % 251 for i in range(size))
    a.conn.execute("INSERT INTO v VALUES(1, ?)", (blob,))
    b.merge(a.changes())
    assert b.conn.execute("SELECT x, typeof(x) FROM v").fetchone() == (blob, "blob")


@pytest.mark.parametrize(
    ("decl", "value", "typ"),
    [
        ("INTEGER", 1_700_000_000_123, "integer"),  # unix ms
        ("REAL", 2460000.5, "real"),  # julian day
        ("REAL", 1700000000.123456, "real"),  # unix seconds as float
        ("TEXT", "2024-01-02T03:04:05.678+01:00", "text"),  # ISO-8601
        ("TEXT", "2024-01-02 03:04:05", "text"),
        ("", 1_700_000_000_123, "integer"),
        ("", "2024-01-02T03:04:05Z", "text"),
        ("TIMESTAMP", "2024-01-02T03:04:05Z", "text"),
        ("DATETIME", 1_700_000_000, "integer"),
    ],
)
def test_timestamps_stay_identical(decl: str, value: Any, typ: str) -> None:
    a, b = pair(decl)
    a.conn.execute("INSERT INTO v VALUES(1, ?)", (value,))
    a.conn.execute("INSERT INTO v VALUES(2, julianday('2024-01-02'))")
    a.conn.execute("INSERT INTO v VALUES(3, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))")
    b.merge(a.changes())
    q = "SELECT x, typeof(x) FROM v ORDER BY id"
    got = b.conn.execute(q).fetchall()
    assert got == a.conn.execute(q).fetchall()
    assert got[0] == (value, typ)


def test_affinity_of_declared_column_matches_plain_sqlite() -> None:
    # An INTEGER column stores text '5' as 5 on both sides; the merge must not preserve
    # a different storage class than a local insert would produce.
    a, b = pair("INTEGER")
    a.conn.execute("INSERT INTO v VALUES(1, '5'), (2, 5.0), (3, 'x')")
    b.merge(a.changes())
    q = "SELECT x, typeof(x) FROM v ORDER BY id"
    assert b.conn.execute(q).fetchall() == a.conn.execute(q).fetchall()
