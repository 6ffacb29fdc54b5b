"""Property tests: replicas converge, and agree with an independent reference model.

Each example builds 3-5 replicas of one random table, runs random local writes (inserts,
updates, deletes, re-inserts, INSERT OR REPLACE, primary-key updates, multi-statement and
rolled-back transactions) and random syncs (full feeds, and incremental ``changes_since``
ranges delivered as shuffled, duplicated, partial whole-transaction batches). After every step
each replica's CRDT state (per row cl, per cell col_version and value) and table must equal
the reference model's (tests/core/crdt_model.py), which is fed the same writes and the same
delivered changes. A final full exchange must leave every replica identical.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from core_helpers import rows
from crdt_model import SENTINEL, Replica, Row, canon
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import crsync
from crsync import Change, unpack_pk


def _int_key(i: int) -> tuple[Any, ...]:
    return (i,)


def _text_key(i: int) -> tuple[Any, ...]:
    return (["a", "b", "é", "a\x00"][i],)


def _blob_key(i: int) -> tuple[Any, ...]:
    return ([b"", b"\x00", b"\x01", b"~"][i],)


def _composite_key(i: int) -> tuple[Any, ...]:
    return (i % 2, "xy"[i // 2])


PK_KINDS: dict[str, tuple[str, list[str], Callable[[int], tuple[Any, ...]]]] = {
    "int": ("k INTEGER PRIMARY KEY NOT NULL", ["k"], _int_key),
    "text": ("k TEXT PRIMARY KEY NOT NULL", ["k"], _text_key),
    "blob": ("k BLOB PRIMARY KEY NOT NULL", ["k"], _blob_key),
    "composite": ("k1 INTEGER NOT NULL, k2 TEXT NOT NULL", ["k1", "k2"], _composite_key),
}
VALUES = [0, 1, 2, -1, 10**12, 1.0, 2.5, "a", "b", "", "1", b"a", b"", None]
DEFAULTS = [None, 7, "d"]

keys = st.integers(0, 3)
vals = st.sampled_from(VALUES)
write = st.one_of(
    st.tuples(st.just("insert"), keys, st.tuples(vals, vals, vals)),
    st.tuples(st.just("update"), keys, st.integers(0, 2), vals),
    st.tuples(st.just("delete"), keys),
    st.tuples(st.just("move"), keys, keys),
)
op = st.one_of(
    st.tuples(st.just("w"), st.integers(0, 4), write),
    st.tuples(
        st.just("tx"), st.integers(0, 4), st.lists(write, min_size=1, max_size=4), st.booleans()
    ),
    st.tuples(
        st.just("sync"),
        st.integers(0, 4),
        st.integers(0, 4),
        st.sampled_from(["full", "incr", "relay"]),
        st.integers(0, 2**32),
    ),
)
schema = st.tuples(
    st.sampled_from(sorted(PK_KINDS)),
    st.integers(0, 3),
    st.lists(st.sampled_from(range(len(DEFAULTS))), min_size=3, max_size=3),
)


class World:
    def __init__(self, n: int, pk_kind: str, ncols: int, dflt: list[int]) -> None:
        pk_decl, self.pk_names, self.key_of = PK_KINDS[pk_kind]
        self.columns = [f"c{i}" for i in range(ncols)]
        self.defaults = {c: DEFAULTS[dflt[i]] for i, c in enumerate(self.columns)}
        cols = "".join(
            f", {c}" + ("" if self.defaults[c] is None else f" DEFAULT {self.defaults[c]!r}")
            for c in self.columns
        )
        pk_clause = ", PRIMARY KEY (k1, k2)" if pk_kind == "composite" else ""
        self.ddl = f"CREATE TABLE t({pk_decl}{cols}{pk_clause})"
        self.dbs: list[crsync.Database] = []
        self.models: list[Replica] = []
        for i in range(n):
            db = crsync.connect(":memory:")
            db.conn.execute(
                "UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (bytes([i + 1]) * 16,)
            )
            db.conn.execute(self.ddl)
            db.track("t", integer_keys="app-assigned")
            self.dbs.append(db)
            self.models.append(Replica(self.columns, self.defaults))
        self.cursors: dict[tuple[int, int], int] = {}
        self.where = " AND ".join(f"{p} = ?" for p in self.pk_names)

    # -------------------------------------------------------------- writes

    def write(self, r: int, w: tuple[Any, ...]) -> None:
        db, m = self.dbs[r], self.models[r]
        kind = w[0]
        key = self.key_of(w[1])
        if kind == "insert":
            values = dict(zip(self.columns, w[2], strict=False))
            verb = "INSERT OR REPLACE" if m.alive(key) else "INSERT"
            names = ", ".join(self.pk_names + self.columns)
            marks = ", ".join("?" * (len(key) + len(self.columns)))
            db.conn.execute(
                f"{verb} INTO t ({names}) VALUES ({marks})",
                key + tuple(values[c] for c in self.columns),
            )
            m.insert(key, values)
        elif kind == "update":
            if not self.columns:
                return
            col = self.columns[w[2] % len(self.columns)]
            db.conn.execute(f"UPDATE t SET {col} = ? WHERE {self.where}", (w[3], *key))
            m.update(key, col, w[3])
        elif kind == "delete":
            db.conn.execute(f"DELETE FROM t WHERE {self.where}", key)
            m.delete(key)
        elif kind == "move":
            new = self.key_of(w[2])
            if new == key or not m.alive(key) or m.alive(new):
                return
            sets = ", ".join(f"{p} = ?" for p in self.pk_names)
            db.conn.execute(f"UPDATE t SET {sets} WHERE {self.where}", (*new, *key))
            m.move(key, new)

    def tx(self, r: int, writes: list[tuple[Any, ...]], rollback: bool) -> None:
        db = self.dbs[r]
        if rollback:
            saved = {k: (row.cl, dict(row.cells)) for k, row in self.models[r].rows.items()}
        db.conn.execute("BEGIN")
        for w in writes:
            self.write(r, w)
        if rollback:
            db.conn.execute("ROLLBACK")
            m = self.models[r]
            m.rows = {}
            for k, (cl, cells) in saved.items():
                row = Row(cl)
                row.cells = cells
                m.rows[k] = row
        else:
            db.conn.execute("COMMIT")

    # -------------------------------------------------------------- sync

    def deliver(self, dst: int, batch: list[Change]) -> None:
        self.dbs[dst].merge(batch)
        m = self.models[dst]
        for c in batch:
            m.merge(unpack_pk(c.pk), c.cid, c.val, c.col_version, c.cl)

    def sync(self, src: int, dst: int, mode: str, seed: int) -> None:
        if src == dst:
            return
        rnd = random.Random(seed)
        s = self.dbs[src]
        if mode == "full":
            batch = s.changes()
        else:
            excl = self.dbs[dst].site_id if mode == "relay" else None
            cur = self.cursors.get((src, dst), 0)
            nxt, got = s.changes_since(cur, exclude_site=excl)
            versions = sorted({c.db_version for c in got})
            k = rnd.randint(0, len(versions))  # deliver whole transactions, a prefix of them
            if k < len(versions):
                upto = versions[k - 1] if k else cur
                got = [c for c in got if c.db_version <= upto]
                nxt = upto
            self.cursors[(src, dst)] = nxt
            batch = got
        batch = list(batch)
        batch += rnd.sample(batch, min(len(batch), rnd.randint(0, 3)))  # duplicates
        rnd.shuffle(batch)
        self.deliver(dst, batch)

    # -------------------------------------------------------------- checks

    def real_state(self, r: int) -> dict[tuple[Any, ...], tuple[int, dict[str, Any]]]:
        out: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
        for pk, cid, val, cv, cl in self.dbs[r].conn.execute(
            "SELECT pk, cid, val, col_version, cl FROM crdt_changes"
        ):
            key = unpack_pk(pk)
            row = out.setdefault(key, (cl, {}))
            assert row[0] == cl
            if cid != SENTINEL:
                row[1][cid] = (cv, canon(val))
        return out

    def check(self, r: int) -> None:
        assert self.real_state(r) == self.models[r].state(), f"replica {r} state"
        assert rows(self.dbs[r].conn, "t") == self.models[r].table(), f"replica {r} table"

    def exchange_all(self) -> None:
        n = len(self.dbs)
        for _ in range(2):
            for i in range(n):
                for j in range(n):
                    if i != j:
                        self.deliver(j, self.dbs[i].changes())
        for i in range(n):
            for j in range(n):
                if i != j:
                    assert self.dbs[j].merge(self.dbs[i].changes()) == 0, "not quiescent"


def run(n: int, sch: tuple[str, int, list[int]], ops: list[tuple[Any, ...]]) -> World:
    world = World(n, *sch)
    for o in ops:
        if o[0] == "w":
            r = o[1] % n
            world.write(r, o[2])
            world.check(r)
        elif o[0] == "tx":
            r = o[1] % n
            world.tx(r, o[2], o[3])
            world.check(r)
        else:
            dst = o[2] % n
            world.sync(o[1] % n, dst, o[3], o[4])
            world.check(dst)
    world.exchange_all()
    first = rows(world.dbs[0].conn, "t")
    state = world.real_state(0)
    for i in range(n):
        world.check(i)
        assert rows(world.dbs[i].conn, "t") == first
        assert world.real_state(i) == state
    return world


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 5), sch=schema, ops=st.lists(op, max_size=30))
def test_replicas_converge_and_match_the_reference_model(
    n: int, sch: tuple[str, int, list[int]], ops: list[tuple[Any, ...]]
) -> None:
    run(n, sch, ops)


# ---------------------------------------------------------------- algebra of merge

history = st.lists(st.tuples(st.integers(0, 2), write), max_size=12)


def _histories(
    sch: tuple[str, int, list[int]], hist: list[tuple[int, Any]], syncs: list[tuple[int, int]]
) -> tuple[World, list[list[Change]]]:
    world = World(3, *sch)
    for i, (r, w) in enumerate(hist):
        world.write(r, w)
        if i < len(syncs):
            s, d = syncs[i]
            if s != d:
                world.deliver(d, world.dbs[s].changes())
    return world, [db.changes() for db in world.dbs]


def _fresh(world: World, seed: bytes) -> crsync.Database:
    db = crsync.connect(":memory:")
    db.conn.execute("UPDATE crsync_sites SET site_id = ? WHERE ordinal = 0", (seed * 16,))
    db.conn.execute(world.ddl)
    db.track("t", integer_keys="app-assigned")
    return db


def _snapshot(db: crsync.Database) -> tuple[Any, ...]:
    """Table content, each row's cl and each cell's (col_version, value).

    Whether a row holds a ``cl 1`` create record is not compared: a create sentinel that
    arrives after a cell of the same row is redundant and ignored, so its presence depends on
    delivery order (in cr-sqlite too); it never changes data or cl.
    """
    cl: dict[bytes, int] = {}
    cells = set()
    for pk, cid, val, cv, c in db.conn.execute(
        "SELECT pk, cid, val, col_version, cl FROM crdt_changes"
    ):
        assert cl.setdefault(pk, c) == c
        if cid != SENTINEL:
            cells.add((pk, cid, cv, repr(canon(val))))
    return (rows(db.conn, "t"), cl, cells)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sch=schema,
    hist=history,
    syncs=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), max_size=6),
    seed=st.integers(0, 2**32),
)
def test_merge_is_commutative_associative_and_idempotent(
    sch: tuple[str, int, list[int]],
    hist: list[tuple[int, Any]],
    syncs: list[tuple[int, int]],
    seed: int,
) -> None:
    world, sets = _histories(sch, hist, syncs)
    s1, s2, s3 = sets
    rnd = random.Random(seed)
    # commutativity: two orders of whole sets
    x, y = _fresh(world, b"\x10"), _fresh(world, b"\x11")
    for s in (s1, s2, s3):
        x.merge(s)
    for s in (s3, s1, s2):
        y.merge(s)
    # associativity / batching: one shuffled batch with duplicates
    z = _fresh(world, b"\x12")
    allc = s1 + s2 + s3 + s2
    rnd.shuffle(allc)
    z.merge(allc)
    # one change per merge call, random order
    w = _fresh(world, b"\x13")
    singles = s1 + s2 + s3
    rnd.shuffle(singles)
    for c in singles:
        w.merge([c])
    assert _snapshot(x) == _snapshot(y) == _snapshot(z) == _snapshot(w)
    # idempotency
    snap, v = _snapshot(x), x.db_version
    assert x.merge(s1 + s2 + s3) == 0
    assert _snapshot(x) == snap and x.db_version == v
    # merging into a replica with its own state is order-independent too
    a1, a2 = world.dbs[0], _fresh(world, b"\x14")
    a2.merge(s1)
    for s in (s3, s2):
        a1.merge(s)
    for s in (s2, s3):
        a2.merge(s)
    assert _snapshot(a1)[0] == _snapshot(a2)[0]


# ---------------------------------------------------------------- regressions


def test_regression_resurrect_then_move_then_partial_sync() -> None:
    """A hand-written history touching resurrection, pk moves and partial delivery."""
    ops: list[tuple[Any, ...]] = [
        ("w", 0, ("insert", 0, (1, "a", None))),
        ("sync", 0, 1, "incr", 1),
        ("w", 0, ("delete", 0)),
        ("w", 1, ("update", 0, 0, 5)),
        ("w", 0, ("insert", 0, (2, "b", b"a"))),
        ("w", 0, ("move", 0, 1)),
        ("sync", 0, 1, "incr", 7),
        ("sync", 1, 2, "relay", 3),
        ("tx", 2, [("insert", 1, (3, 3, 3)), ("move", 1, 2), ("delete", 2)], False),
        ("sync", 2, 0, "full", 4),
    ]
    run(3, ("int", 3, [0, 1, 2]), ops)


@pytest.mark.parametrize("kind", sorted(PK_KINDS))
def test_regression_pk_only_tables_converge(kind: str) -> None:
    ops: list[tuple[Any, ...]] = [
        ("w", 0, ("insert", 1, (0, 0, 0))),
        ("w", 1, ("insert", 1, (0, 0, 0))),
        ("w", 0, ("delete", 1)),
        ("w", 0, ("insert", 1, (0, 0, 0))),
        ("w", 1, ("delete", 1)),
        ("sync", 0, 1, "incr", 0),
        ("w", 2, ("insert", 1, (0, 0, 0))),
        ("w", 2, ("move", 1, 3)),
    ]
    run(3, (kind, 0, [0, 0, 0]), ops)


def test_regression_create_sentinel_order_changes_no_data() -> None:
    """Found by the algebra property: a pk move creates a ``cl 1`` sentinel on the new key.

    Delivered before the moved cell it is recorded; after it, it is redundant and ignored.
    Either way the data and every cl and cell clock agree.
    """
    sch = ("blob", 1, [0, 0, 0])
    hist = [(0, ("insert", 1, (0, 0, 0))), (0, ("move", 0, 1)), (0, ("move", 1, 0))]
    world, (s1, _, _) = _histories(sch, hist, [])
    snaps = []
    for order in (s1, list(reversed(s1))):
        db = _fresh(world, b"\x10")
        db.merge(order)
        snaps.append(_snapshot(db))
        one = _fresh(world, b"\x11")
        for c in order:
            one.merge([c])
        snaps.append(_snapshot(one))
    assert all(s == snaps[0] for s in snaps)
