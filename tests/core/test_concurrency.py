"""Concurrent writers on one WAL file while a reader follows the change feed.

Two processes write the same file (one through crsync.connect, one through plain sqlite3,
which never imports crsync) while a third repeatedly calls ``changes_since(cursor)``. The
reader must miss nothing (its view rebuilt from the feed equals the final table) and never
see a transaction partially (all cells of one transaction share one db_version and arrive in
the same read).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import crsync

TXNS = 300
ROWS_PER_TXN = 3

WRITER = r"""
import sys
name, path, txns, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
if mode == "crsync":
    import crsync
    conn = crsync.connect(path, busy_timeout_ms=30000).conn
else:
    import sqlite3
    assert "crsync" not in sys.modules
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
print("ready", flush=True)
sys.stdin.readline()  # start together with the other writer
for i in range(txns):
    m = f"{name}:{i}"
    conn.execute("BEGIN IMMEDIATE")
    for j in range(ROWS):
        conn.execute("INSERT INTO t (id, tx, n) VALUES (?, ?, ?)", (f"{name}-{i}-{j}", m, i))
    conn.execute("UPDATE t SET n = n + 1, tx = ? WHERE id = 'hot'", (m,))
    if i >= 5 and i % 4 == 0:
        conn.execute("DELETE FROM t WHERE id = ?", (f"{name}-{i - 5}-0",))
    if i % 7 == 0:
        conn.execute("UPDATE t SET n = -1 WHERE id = ?", (f"{name}-{i // 2}-2",))
    conn.execute("COMMIT")
conn.execute("INSERT INTO t (id, tx, n) VALUES (?, 'done', 0)", (f"done-{name}",))
"""

READER = r"""
import json, sys
import crsync
path, writers = sys.argv[1], sys.argv[2].split(",")
db = crsync.connect(path, busy_timeout_ms=30000)
cursor, reads, done = 0, [], set()
print("ready", flush=True)
for _ in range(1_000_000):
    cursor, got = db.changes_since(cursor)
    if got:
        reads.append([[c.pk.hex(), c.cid, c.val, c.db_version, c.cl] for c in got])
        done |= {c.pk.hex() for c in got if c.cid == "tx" and c.val == "done"}
    if len(done) == len(writers):
        break
cursor, got = db.changes_since(cursor)
reads.append([[c.pk.hex(), c.cid, c.val, c.db_version, c.cl] for c in got])
print(json.dumps({"reads": reads, "complete": len(done) == len(writers)}))
"""


def test_reader_sees_every_write_of_concurrent_writers_once_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = crsync.connect(path)
    db.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, tx TEXT, n INTEGER)")
    db.track("t")
    db.conn.execute("INSERT INTO t VALUES ('hot', 'init', 0)")
    db.close()
    writer = WRITER.replace("ROWS", str(ROWS_PER_TXN))
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(path), "w1,w2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", writer, name, str(path), str(TXNS), mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, mode in (("w1", "crsync"), ("w2", "plain"))
    ]
    try:
        # Handshake (no sleeps): everyone connected, the reader polling, then both writers go.
        for p in [reader, *writers]:
            assert p.stdout is not None
            assert p.stdout.readline().strip() == "ready"
        for w in writers:
            assert w.stdin is not None
            w.stdin.write("go\n")
            w.stdin.flush()
        for w in writers:
            _, err = w.communicate(timeout=120)
            assert w.returncode == 0, err
        out, err = reader.communicate(timeout=120)
        assert reader.returncode == 0, err
    finally:
        for p in [*writers, reader]:
            if p.poll() is None:
                p.kill()
                p.wait()
    result = json.loads(out)
    assert result["complete"]
    reads: list[list[list[Any]]] = result["reads"]

    # 1. Rebuild the table from the feed, in the order the reader saw it.
    state: dict[str, dict[str, Any]] = {}
    for read in reads:
        for pk, cid, val, _dbv, cl in read:
            row = state.setdefault(pk, {"cl": 0, "cells": {}})
            assert cl >= row["cl"], "causal length went backwards in the feed"
            if cl != row["cl"]:
                row["cl"], row["cells"] = cl, {}
            if cid != crsync.SENTINEL:
                row["cells"][cid] = val
    final = crsync.connect(path)
    table = {
        crsync.pack_pk([i]).hex(): {"tx": tx, "n": n}
        for i, tx, n in final.conn.execute("SELECT id, tx, n FROM t")
    }
    rebuilt = {pk: r["cells"] for pk, r in state.items() if r["cl"] % 2 == 1}
    assert rebuilt == table
    assert table[crsync.pack_pk(["hot"]).hex()]["n"] == 2 * TXNS
    assert (
        len(table)
        == 1 + 2 + 2 * TXNS * ROWS_PER_TXN - sum(1 for i in range(5, TXNS) if i % 4 == 0) * 2
    )

    # 2. No transaction seen partially: one db_version and one read per transaction marker.
    versions: dict[str, set[int]] = {}
    read_of: dict[str, set[int]] = {}
    for k, read in enumerate(reads):
        for _pk, cid, val, dbv, _cl in read:
            if cid == "tx" and isinstance(val, str) and ":" in val:
                versions.setdefault(val, set()).add(dbv)
                read_of.setdefault(val, set()).add(k)
    assert len(versions) >= TXNS  # most transactions still own cells when read
    for marker, vs in versions.items():
        assert len(vs) == 1, f"transaction {marker} seen with versions {vs}"
        assert len(read_of[marker]) == 1, f"transaction {marker} split across reads"

    # 3. Nothing seen twice within the feed: each (pk, cid) at most once per read, and a
    # later read never repeats a version the cursor already passed.
    last_max = 0
    for read in reads:
        keys = [(pk, cid) for pk, cid, *_ in read]
        assert len(keys) == len(set(keys))
        if read:
            assert min(r[3] for r in read) > last_max
            last_max = max(r[3] for r in read)


def test_a_write_committed_between_sealing_and_reading_loses_no_cell_of_the_sealed_versions(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """``changes_since`` seals the open version, then reads up to it in a new snapshot; a
    writer on another connection (here a plain sqlite3 one) can commit in between. Its write
    moves the row to the next version but leaves the clocks of the cells it did not touch:
    those belong to this read. (They were lost: the row was left out because its newest
    version was past the sealed one, and the next read starts after it; seen as a rare
    failure of the concurrent-writers test above.)"""
    import sqlite3

    from crsync import versions

    path = tmp_path / "race.db"
    db = crsync.connect(path)
    db.conn.execute("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, tx TEXT, n INTEGER)")
    db.track("t")
    db.conn.execute("INSERT INTO t VALUES ('r', 'first', 1)")
    other = sqlite3.connect(path, isolation_level=None)
    seal = versions.seal
    writes = iter([1])

    def seal_then_write(d: crsync.Database) -> int:
        upto = seal(d)
        for _ in writes:  # once: another connection commits right after the seal
            other.execute("UPDATE t SET n = 2 WHERE id = 'r'")
        return upto

    monkeypatch.setattr(versions, "seal", seal_then_write)
    cursor, first = db.changes_since(0)
    cursor, second = db.changes_since(cursor)
    # The feed carries state: n was overwritten before the read, so its latest value comes,
    # in the version that wrote it; tx, untouched, comes in the version that wrote it.
    assert [(c.cid, c.val, c.db_version) for c in first] == [("tx", "first", 1)], (
        "the sealed version's cell was lost"
    )
    assert [(c.cid, c.val, c.db_version) for c in second] == [("n", 2, 2)]
    other.close()
    db.close()
