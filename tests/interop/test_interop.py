"""crsync against the real cr-sqlite 0.16.0: same local capture, same merges, same wire format.

Every test runs crsync databases next to cr-sqlite databases (the Node peer of crsqlite.py) and
exchanges ``crsql_changes`` 9-tuples between them. Expected results come from
/work/shared/docs/crdt-semantics.md (§6 merge rules, §7 packing, §17 test vectors).

Left out on purpose (documented deliberate differences, see the docs): INSERT OR REPLACE and
primary-key UPDATEs (test_exact_agreement_interop.py covers UPDATE OR REPLACE onto live keys,
primary-key moves and the per-version seq order), ``-0.0`` (cr-sqlite cannot order it against
``0.0``), NaN (SQLite stores NULL), and exact db_version/seq values, which crsync stamps in its
own way.

NOTE: CI installs the Node side (`npm ci --prefix tests/interop`); these tests skip (through the
`crsqlite_peer` fixture) only on a machine without node or tests/interop/node_modules.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Iterator, Sequence

import pytest
from crsqlite import Change, CrSqlitePeerProcess, SqlValue
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from replicas import (
    CRSQLITE,
    CRSYNC,
    KINDS,
    Replica,
    SqlFailed,
    cell_state,
    new_replica,
    table_rows,
    typed,
    typed_rows,
)

import crsync

pytestmark = pytest.mark.interop

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
SENTINEL = "-1"

A_SITE = bytes([1]) * 16
B_SITE = bytes([2]) * 16

# Tables of the random histories: a text pk, an integer (rowid alias) pk and a composite pk.
HISTORY_SCHEMA = [
    "CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)",
    "CREATE TABLE n(id INTEGER PRIMARY KEY NOT NULL, x, y DEFAULT 'dflt')",
    "CREATE TABLE c(k1 INTEGER NOT NULL, k2 TEXT NOT NULL, v, PRIMARY KEY (k1, k2))",
    # declared types: affinity converts what is stored (and so what is captured and merged)
    "CREATE TABLE d(id TEXT PRIMARY KEY NOT NULL, i INTEGER, r REAL, s TEXT, "
    "m NUMERIC NOT NULL DEFAULT 0, b BLOB)",
]
HISTORY_TABLES = {"t": "id", "n": "id", "c": "k1, k2", "d": "id"}

# Values every history draws from; they must survive both engines and the wire unchanged.
SPECIAL_VALUES: list[SqlValue] = [
    None,
    0,
    1,
    -1,
    200,
    INT64_MAX,
    INT64_MIN,
    0.5,
    2.0,
    -2.5,
    1e308,
    5e-324,
    math.inf,
    -math.inf,
    "",
    "x",
    "é",
    "😀 ünï",
    "a\x00b",
    b"",
    b"\x00",
    b"\xff\x01",
]

OpenReplica = Callable[..., Replica]


@pytest.fixture
def open_replica(crsqlite_peer: CrSqlitePeerProcess) -> Iterator[OpenReplica]:
    """Factory: ``open_replica(kind, schema, tables, site_id=None)``; closed afterwards."""
    made: list[Replica] = []

    def make(
        kind: str, schema: Sequence[str], tables: Sequence[str], site_id: bytes | None = None
    ) -> Replica:
        rep = new_replica(kind, crsqlite_peer, schema, tables, site_id=site_id)
        made.append(rep)
        return rep

    yield make
    for rep in made:
        rep.close()


def close_all(reps: Sequence[Replica]) -> None:
    for rep in reps:
        rep.close()


def assert_same_tables(reps: Sequence[Replica], tables: dict[str, str]) -> None:
    for table, order in tables.items():
        first = table_rows(reps[0], table, order)
        for rep in reps[1:]:
            assert table_rows(rep, table, order) == first, (table, reps[0], rep)


# ------------------------------------------------------------------------------------------------
# statement generators (no INSERT OR REPLACE, no pk UPDATE: deliberate differences)

Stmt = tuple[str, tuple[SqlValue, ...]]

values = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.integers(-3, 3),
    st.floats(allow_nan=False, width=64).filter(lambda f: f != 0.0 or math.copysign(1, f) > 0),
    st.text(max_size=3),
    st.binary(max_size=3),
)
t_ids = st.sampled_from(["r1", "é", ""])
n_ids = st.sampled_from([0, 200, -5, INT64_MAX])
c_keys = st.tuples(st.sampled_from([-1, 2**40]), st.sampled_from(["x", ""]))


@st.composite
def t_stmt(draw: st.DrawFn) -> Stmt:
    kind = draw(st.sampled_from(["insert", "insert1", "update", "update_all", "upsert", "delete"]))
    rid = draw(t_ids)
    if kind == "insert":
        return ("INSERT INTO t VALUES (?, ?, ?)", (rid, draw(values), draw(values)))
    if kind == "insert1":  # the other column takes its default (NULL)
        col = draw(st.sampled_from(["a", "b"]))
        return (f"INSERT INTO t (id, {col}) VALUES (?, ?)", (rid, draw(values)))
    if kind == "update":
        cols = draw(st.sampled_from(["a", "b", "a, b"])).split(", ")
        sets = ", ".join(f"{c} = ?" for c in cols)
        return (f"UPDATE t SET {sets} WHERE id = ?", (*(draw(values) for _ in cols), rid))
    if kind == "update_all":
        return ("UPDATE t SET b = ?", (draw(values),))
    if kind == "upsert":
        return (
            "INSERT INTO t VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET a = excluded.a",
            (rid, draw(values), draw(values)),
        )
    return ("DELETE FROM t WHERE id = ?", (rid,))


@st.composite
def n_stmt(draw: st.DrawFn) -> Stmt:
    kind = draw(st.sampled_from(["insert", "insert1", "update", "swap", "delete", "delete_where"]))
    rid = draw(n_ids)
    if kind == "insert":
        return ("INSERT INTO n VALUES (?, ?, ?)", (rid, draw(values), draw(values)))
    if kind == "insert1":  # y takes its default
        return ("INSERT INTO n (id, x) VALUES (?, ?)", (rid, draw(values)))
    if kind == "update":
        return ("UPDATE n SET x = ? WHERE id = ?", (draw(values), rid))
    if kind == "swap":
        return ("UPDATE n SET x = y, y = x WHERE id = ?", (rid,))
    if kind == "delete":
        return ("DELETE FROM n WHERE id = ?", (rid,))
    return ("DELETE FROM n WHERE x IS ?", (draw(values),))


@st.composite
def c_stmt(draw: st.DrawFn) -> Stmt:
    kind = draw(st.sampled_from(["insert", "update", "delete"]))
    k1, k2 = draw(c_keys)
    if kind == "insert":
        return ("INSERT INTO c VALUES (?, ?, ?)", (k1, k2, draw(values)))
    if kind == "update":
        return ("UPDATE c SET v = ? WHERE k1 = ? AND k2 = ?", (draw(values), k1, k2))
    return ("DELETE FROM c WHERE k1 = ? AND k2 = ?", (k1, k2))


affinity_values = st.one_of(
    values, st.sampled_from(["5", " 7 ", "1e3", "2.50", "0x10", "-0", "9223372036854775808"])
)


@st.composite
def d_stmt(draw: st.DrawFn) -> Stmt:
    kind = draw(st.sampled_from(["insert", "insert1", "update", "delete"]))
    rid = draw(st.sampled_from(["d1", "d2"]))
    if kind == "insert":
        vals = tuple(draw(affinity_values) for _ in range(5))
        if vals[3] is None:
            vals = (*vals[:3], 0, *vals[4:])  # m is NOT NULL
        return ("INSERT INTO d VALUES (?, ?, ?, ?, ?, ?)", (rid, *vals))
    if kind == "insert1":
        return ("INSERT INTO d (id, i) VALUES (?, ?)", (rid, draw(affinity_values)))
    if kind == "update":
        col = draw(st.sampled_from(["i", "r", "s", "m", "b"]))
        return (f"UPDATE d SET {col} = ? WHERE id = ?", (draw(affinity_values), rid))
    return ("DELETE FROM d WHERE id = ?", (rid,))


any_stmt = st.one_of(t_stmt(), t_stmt(), n_stmt(), c_stmt(), d_stmt())


@st.composite
def step(draw: st.DrawFn) -> list[Stmt]:
    """One autocommit statement, or a transaction of several that commits or rolls back."""
    if draw(st.integers(0, 3)):
        return [draw(any_stmt)]
    body = draw(st.lists(any_stmt, min_size=1, max_size=5))
    end = draw(st.sampled_from(["COMMIT", "COMMIT", "ROLLBACK"]))
    return [("BEGIN", ()), *body, (end, ())]


def run_step(rep: Replica, stmts: list[Stmt]) -> list[bool]:
    """Run the statements; which of them succeeded."""
    ok = []
    for sql, params in stmts:
        try:
            rep.execute(sql, params)
            ok.append(True)
        except SqlFailed:
            ok.append(False)
    return ok


HYPOTHESIS = settings(
    max_examples=int(os.environ.get("CRSYNC_INTEROP_EXAMPLES", "80")),
    deadline=None,
    derandomize=not os.environ.get("CRSYNC_INTEROP_EXAMPLES"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------------------------------------
# 1. identical local histories give identical tables and identical replicated state


@HYPOTHESIS
@given(history=st.lists(step(), min_size=15, max_size=40))
def test_same_local_history_gives_same_tables_and_cell_clocks(
    crsqlite_peer: CrSqlitePeerProcess, history: list[list[Stmt]]
) -> None:
    ours = new_replica(CRSYNC, crsqlite_peer, HISTORY_SCHEMA, list(HISTORY_TABLES))
    theirs = new_replica(CRSQLITE, crsqlite_peer, HISTORY_SCHEMA, list(HISTORY_TABLES))
    try:
        for stmts in history:
            assert run_step(ours, stmts) == run_step(theirs, stmts), stmts
        assert_same_tables([ours, theirs], HISTORY_TABLES)
        # Beyond the data: every cell's (value, col_version, cl) and every sentinel match.
        assert cell_state(ours.changes()) == cell_state(theirs.changes())
    finally:
        close_all([ours, theirs])


# ------------------------------------------------------------------------------------------------
# 2. two-way exchange between mixed replicas converges


@st.composite
def mixed_kinds(draw: st.DrawFn) -> list[str]:
    n = draw(st.integers(2, 4))
    kinds = [CRSYNC, CRSQLITE] + [draw(st.sampled_from(KINDS)) for _ in range(n - 2)]
    return draw(st.permutations(kinds))


# ("write", replica, replica, statements) or (sync mode, source, destination, [])
ScriptItem = tuple[str, int, int, list[Stmt]]
Exchange = tuple[list[str], list[ScriptItem], random.Random]


@st.composite
def exchange_script(draw: st.DrawFn) -> Exchange:
    kinds = draw(mixed_kinds())
    n = len(kinds)
    rep = st.integers(0, n - 1)
    write: st.SearchStrategy[ScriptItem] = st.builds(
        lambda i, stmts: ("write", i, i, stmts), rep, step()
    )
    sync: st.SearchStrategy[ScriptItem] = st.builds(
        lambda mode, s, k: (mode, s, (s + k) % n, []),
        st.sampled_from(["full", "delta", "delta", "delta", "shuffled"]),
        rep,
        st.integers(1, n - 1),
    )
    script: list[ScriptItem] = draw(st.lists(st.one_of(write, sync), min_size=10, max_size=40))
    return kinds, script, draw(st.randoms(use_true_random=False))


def deliver_shuffled(src: Replica, dst: Replica, rng: random.Random, changes: list[Change]) -> None:
    """``changes`` in random order, some twice, in one to three merge transactions."""
    batch = changes + rng.sample(changes, k=rng.randint(0, len(changes)))
    rng.shuffle(batch)
    cuts = sorted(rng.sample(range(len(batch) + 1), k=min(2, len(batch) + 1)))
    for part in (batch[: cuts[0]], batch[cuts[0] : cuts[-1]], batch[cuts[-1] :]):
        if part:
            dst.apply(part)


@HYPOTHESIS
@given(scenario=exchange_script())
def test_mixed_replicas_converge_under_any_delivery(
    crsqlite_peer: CrSqlitePeerProcess,
    scenario: Exchange,
) -> None:
    """2-4 replicas of both kinds write concurrently and sync in random full, delta
    (per-link cursor) and shuffled-and-duplicated deliveries; delta syncs on every link then
    converge data and clocks, after which a full exchange wins nothing anywhere."""
    kinds, script, rng = scenario
    reps = [new_replica(k, crsqlite_peer, HISTORY_SCHEMA, list(HISTORY_TABLES)) for k in kinds]
    cursors: dict[tuple[int, int], int] = {}
    try:
        for what, s, d, stmts in script:
            if what == "write":
                run_step(reps[s], stmts)
                continue
            src, dst = reps[s], reps[d]
            if what == "full":
                dst.apply(src.changes())
            elif what == "delta":
                upto = src.version()
                dst.apply(src.changes(cursors.get((s, d), 0)))
                cursors[(s, d)] = upto
            else:
                deliver_shuffled(src, dst, rng, src.changes())
        # Whatever was delivered so far, delta syncs on every link make everyone equal ...
        for _ in range(2):
            for s in range(len(reps)):
                for d in range(len(reps)):
                    if s != d:
                        upto = reps[s].version()
                        reps[d].apply(reps[s].changes(cursors.get((s, d), 0)))
                        cursors[(s, d)] = upto
        assert_same_tables(reps, HISTORY_TABLES)
        # Clocks converge too (attribution and local versions aside).
        states = [cell_state(rep.changes()) for rep in reps]
        assert all(x == states[0] for x in states[1:])
        # ... and stable: in a full exchange nothing wins anywhere any more.
        wins = {
            (s, d): reps[d].apply(reps[s].changes())
            for s in range(len(reps))
            for d in range(len(reps))
            if s != d
        }
        assert set(wins.values()) == {0}, wins
    finally:
        close_all(reps)


@st.composite
def proxy_script(draw: st.DrawFn) -> tuple[list[str], list[list[Stmt]], list[list[Stmt]]]:
    kinds = draw(st.permutations([CRSYNC, CRSQLITE, draw(st.sampled_from(KINDS))]))
    a_script = draw(st.lists(step(), min_size=5, max_size=25))
    c_script = draw(st.lists(step(), min_size=5, max_size=25))
    return kinds, a_script, c_script


@HYPOTHESIS
@given(scenario=proxy_script())
def test_delta_syncs_through_a_proxy_converge(
    crsqlite_peer: CrSqlitePeerProcess,
    scenario: tuple[list[str], list[list[Stmt]], list[list[Stmt]]],
) -> None:
    """TV-28: A -> B -> C and C -> B -> A with per-link cursors after every step; B forwards
    what it merged, so its merges must be stamped with fresh versions of its own."""
    kinds, a_script, c_script = scenario
    reps = [new_replica(k, crsqlite_peer, HISTORY_SCHEMA, list(HISTORY_TABLES)) for k in kinds]
    a, c = reps[0], reps[2]
    cursors = {(x, y): 0 for x in range(3) for y in range(3)}

    def delta(s: int, d: int) -> None:
        upto = reps[s].version()
        reps[d].apply(reps[s].changes(cursors[(s, d)]))
        cursors[(s, d)] = upto

    try:
        for i in range(max(len(a_script), len(c_script))):
            if i < len(a_script):
                run_step(a, a_script[i])
                delta(0, 1)
                delta(1, 2)
            if i < len(c_script):
                run_step(c, c_script[i])
                delta(2, 1)
                delta(1, 0)
        assert_same_tables(reps, HISTORY_TABLES)
        states = [cell_state(rep.changes()) for rep in reps]
        assert states[0] == states[1] == states[2]
    finally:
        close_all(reps)


@st.composite
def twin_script(
    draw: st.DrawFn,
) -> tuple[list[list[Stmt]], list[list[Stmt]], list[list[Stmt]], random.Random]:
    histories = [draw(st.lists(step(), min_size=3, max_size=20)) for _ in range(3)]
    return histories[0], histories[1], histories[2], draw(st.randoms(use_true_random=False))


@HYPOTHESIS
@given(scenario=twin_script())
def test_merge_matches_cr_sqlite_for_any_subset_and_order(
    crsqlite_peer: CrSqlitePeerProcess,
    scenario: tuple[list[list[Stmt]], list[list[Stmt]], list[list[Stmt]], random.Random],
) -> None:
    """cr-sqlite as the oracle: twin receivers (one of each kind, same local history) get the
    same batches (random subsets of two sources' feeds, shuffled, with duplicates) and must
    agree after every batch on data, clocks and whether anything won."""
    history_s, history_c, history_twins, rng = scenario

    def open_(kind: str) -> Replica:
        return new_replica(kind, crsqlite_peer, HISTORY_SCHEMA, list(HISTORY_TABLES))

    sources = [open_(CRSYNC), open_(CRSQLITE)]
    twins = [open_(CRSYNC), open_(CRSQLITE)]
    try:
        for rep, history in ((sources[0], history_s), (sources[1], history_c)):
            for stmts in history:
                run_step(rep, stmts)
        for stmts in history_twins:
            assert run_step(twins[0], stmts) == run_step(twins[1], stmts)
        feed = sources[0].changes() + sources[1].changes()
        for _ in range(4):
            batch = rng.sample(feed, k=rng.randint(0, len(feed)))
            batch += rng.sample(batch, k=rng.randint(0, len(batch) // 4))
            rng.shuffle(batch)
            wins = [twin.apply(batch) for twin in twins]
            assert_same_tables(twins, HISTORY_TABLES)
            assert cell_state(twins[0].changes()) == cell_state(twins[1].changes()), batch
            # crsync counts winning changes; crsql_rows_impacted() counts a cell that also
            # resurrects its row twice. Both agree on whether anything won.
            assert (wins[0] == 0) == (wins[1] == 0), (wins, batch)
            assert wins[0] <= wins[1], (wins, batch)
    finally:
        close_all(sources + twins)


def test_concurrent_conflicting_edits_converge_in_a_mixed_group(open_replica: OpenReplica) -> None:
    """Same cells, delete vs update, re-inserts and a never-synced insert, on four replicas
    (two of each kind), delivered shuffled and duplicated."""
    schema = ["CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)"]
    kinds = [CRSYNC, CRSQLITE, CRSYNC, CRSQLITE]
    reps = [open_replica(k, schema, ["t"]) for k in kinds]
    s0, c1, s2, c3 = reps
    s0.execute("INSERT INTO t VALUES ('r1', 1, 'x'), ('r2', 2, 'y'), ('r3', 3, 'z')")
    for rep in reps[1:]:
        rep.apply(s0.changes())
    s0.execute("UPDATE t SET a = 10 WHERE id = 'r1'")  # same cell, four writers
    c1.execute("UPDATE t SET a = 11 WHERE id = 'r1'")
    s2.execute("UPDATE t SET a = 'text' WHERE id = 'r1'")
    c3.execute("UPDATE t SET a = 9, b = 'c3' WHERE id = 'r1'")
    c1.execute("DELETE FROM t WHERE id = 'r2'")  # delete vs concurrent update
    s2.execute("UPDATE t SET b = 'kept?' WHERE id = 'r2'")
    s0.execute("DELETE FROM t WHERE id = 'r3'")  # delete + re-insert vs delete
    s0.execute("INSERT INTO t VALUES ('r3', 30, 'again')")
    c3.execute("DELETE FROM t WHERE id = 'r3'")
    s2.execute("INSERT INTO t VALUES ('r4', 4, 's2')")  # both create the same new row
    c3.execute("INSERT INTO t VALUES ('r4', 4, 'c3')")
    rng = random.Random(17)
    for _ in range(2):
        for src in reps:
            for dst in reps:
                if src is not dst:
                    deliver_shuffled(src, dst, rng, src.changes())
    expected = [
        ("r1", 11, "c3"),  # equal col_version 2: integer beats text, 11 is the largest
        ("r3", 30, "again"),  # cl 3 beats the cl 2 delete
        ("r4", 4, "s2"),  # equal version and value for a; 's2' > 'c3'
    ]
    for rep in reps:
        assert rep.query("SELECT * FROM t ORDER BY id") == expected, rep
        assert sorted(c[2:] for c in cell_state(rep.changes()) if c[1] == pk_text("r2")) == [
            (SENTINEL, typed(None), 2, 2)
        ]


# ------------------------------------------------------------------------------------------------
# 3. packed primary keys are byte-identical


def pk_text(s: str) -> bytes:
    raw = s.encode()
    assert len(raw) < 256
    return bytes([1, (1 << 3) | 3, len(raw)]) + raw if raw else bytes([1, 3])


# every integer payload width (0..4, 5..7, 8 bytes) and its edges; negatives always take 8
INT_KEYS = [0, 1, 127, 128, 200, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**32]
INT_KEYS += [2**40, 2**56 - 1, 2**56, INT64_MAX, INT64_MIN, -1, -200, -256, -(2**31) - 1]

PK_TABLES: list[tuple[str, str, list[tuple[SqlValue, ...]]]] = [
    (
        "CREATE TABLE k(id INTEGER PRIMARY KEY NOT NULL, v)",
        "id",
        [(v,) for v in INT_KEYS],
    ),
    (
        "CREATE TABLE k(id TEXT PRIMARY KEY NOT NULL, v)",
        "id",
        [("",), ("a",), ("r1",), ("é😀",), ("x" * 255,), ("y" * 256,), ("z" * 70000,)],
    ),
    (
        "CREATE TABLE k(id BLOB PRIMARY KEY NOT NULL, v)",
        "id",
        [(b"",), (b"\x00",), (bytes(range(256)),), (b"\xff" * 300,)],
    ),
    (
        "CREATE TABLE k(id PRIMARY KEY NOT NULL, v)",  # no affinity: any storage class
        "id",
        [(7,), (-7,), (1.5,), (-2.5,), (1e308,), (5e-324,), (math.inf,), ("7",), (b"7",)],
    ),
    (
        "CREATE TABLE k(x INTEGER NOT NULL, y TEXT NOT NULL, z BLOB NOT NULL, v, "
        "PRIMARY KEY (x, y, z))",
        "x, y, z",
        [(12, "str", b"\x01\x02\x03"), (-1, "", b""), (200, "é", b"\x00"), (2**31, "a", b"a")],
    ),
    (
        # pk order differs from declaration order
        "CREATE TABLE k(v, b TEXT NOT NULL, a INTEGER NOT NULL, PRIMARY KEY (a, b))",
        "a, b",
        [(1, "one"), (256, "x"), (-3, "")],
    ),
]


@pytest.mark.parametrize(("ddl", "pk_cols", "keys"), PK_TABLES, ids=lambda x: str(x)[:40])
def test_packed_pks_are_byte_identical(
    open_replica: OpenReplica, ddl: str, pk_cols: str, keys: list[tuple[SqlValue, ...]]
) -> None:
    ours, theirs = open_replica(CRSYNC, [ddl], ["k"]), open_replica(CRSQLITE, [ddl], ["k"])
    cols = pk_cols.split(", ")
    marks = ", ".join("?" * len(cols))
    for i, key in enumerate(keys):
        for rep in (ours, theirs):
            rep.execute(f"INSERT INTO k ({pk_cols}, v) VALUES ({marks}, ?)", [*key, i])
    ours_pks = {(c[1], c[3]) for c in ours.changes() if c[2] == "v"}
    theirs_pks = {(c[1], c[3]) for c in theirs.changes() if c[2] == "v"}
    assert ours_pks == theirs_pks
    assert len(theirs_pks) == len(keys)
    for key in keys:
        packed = crsync.pack_pk(key)
        assert packed == theirs.query(f"SELECT crsql_pack_columns({marks})", key)[0][0]
        assert typed_rows([crsync.unpack_pk(packed)]) == typed_rows([key])
    # Rows (with their pk storage classes) cross both ways intact.
    for src, dst_kind in ((ours, CRSQLITE), (theirs, CRSYNC)):
        dst = open_replica(dst_kind, [ddl], ["k"])
        dst.apply(src.changes())
        assert table_rows(dst, "k", pk_cols) == table_rows(src, "k", pk_cols)


ROUND_TRIP_VALUES: list[SqlValue] = [
    None,
    0,
    INT64_MAX,
    INT64_MIN,
    2**53 + 1,
    1e308,
    -1e308,
    5e-324,
    math.inf,
    -math.inf,
    2.0,
    0.1,
    "",
    "héllo wörld ✓ 😀",
    "\u202e\ufeff",
    "a\x00b",
    b"",
    b"\x00",
    bytes(range(256)),
]


@pytest.mark.parametrize("first", KINDS)
def test_values_round_trip_between_the_two(open_replica: OpenReplica, first: str) -> None:
    schema = ["CREATE TABLE v(id INTEGER PRIMARY KEY NOT NULL, x, y BLOB, z TEXT)"]
    other = CRSQLITE if first == CRSYNC else CRSYNC
    a, b, c = (open_replica(k, schema, ["v"]) for k in (first, other, first))
    for i, value in enumerate(ROUND_TRIP_VALUES):
        # y BLOB and z TEXT: affinity must not bite on the receiving side either
        y = value if isinstance(value, bytes) or value is None else None
        z = value if isinstance(value, str) or value is None else None
        a.execute("INSERT INTO v VALUES (?, ?, ?, ?)", [i, value, y, z])
    b.apply(a.changes())
    c.apply(b.changes())
    expected = table_rows(a, "v", "id")
    assert [r[1] for r in expected] == [typed(v) for v in ROUND_TRIP_VALUES]
    assert table_rows(b, "v", "id") == expected
    assert table_rows(c, "v", "id") == expected
    vals = {(x[1], x[2]): typed(x[3]) for x in a.changes()}
    assert {(x[1], x[2]): typed(x[3]) for x in b.changes()} == vals
    assert {(x[1], x[2]): typed(x[3]) for x in c.changes()} == vals


# ------------------------------------------------------------------------------------------------
# 4. §17 test vectors on a mixed pair (A and B of different kinds, both ways round)

T_SCHEMA = ["CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b)"]
FOO_SCHEMA = ["CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b)"]
PK1 = bytes.fromhex("010901")
PAIRS = [(CRSYNC, CRSQLITE), (CRSQLITE, CRSYNC)]
pair_ids = ["A=crsync,B=cr-sqlite", "A=cr-sqlite,B=crsync"]


def sync(src: Replica, dst: Replica, since: int = 0) -> int:
    return dst.apply(src.changes(since))


def meta(rep: Replica, pk: bytes) -> list[tuple[object, ...]]:
    """(cid, typed val, col_version, site_id, cl) of ``pk``'s changes on ``rep``, sorted."""
    return sorted((c[2], typed(c[3]), c[4], c[6], c[7]) for c in rep.changes() if c[1] == pk)


TV12 = [  # (value on one side, value on the other, winner)
    (5, "5", 5),
    (1, 1.5, 1),
    (2.0, 2, 2),
    ("a", b"a", "a"),
    (None, 0, 0),
    (b"\x00", None, b"\x00"),
    (-1, 0, 0),
    ("B", "a", "a"),
    ("é", "z", "é"),
    (b"\x01", b"\x01\x00", b"\x01\x00"),
    (3.5, -2.0, 3.5),
    (10, 9, 10),
]


@pytest.mark.parametrize("swap", [False, True], ids=["x-on-A", "x-on-B"])
@pytest.mark.parametrize(("x", "y", "winner"), TV12, ids=[repr(v[:2]) for v in TV12])
@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv12_value_ordering(
    open_replica: OpenReplica,
    kind_a: str,
    kind_b: str,
    x: SqlValue,
    y: SqlValue,
    winner: SqlValue,
    swap: bool,
) -> None:
    a, b = open_replica(kind_a, T_SCHEMA, ["t"]), open_replica(kind_b, T_SCHEMA, ["t"])
    a.execute("INSERT INTO t VALUES ('r1', 'start', 'b')")
    sync(a, b)
    on_a, on_b = (y, x) if swap else (x, y)
    a.execute("UPDATE t SET a = ? WHERE id = 'r1'", [on_a])
    b.execute("UPDATE t SET a = ? WHERE id = 'r1'", [on_b])
    sync(a, b)
    sync(b, a)
    for rep in (a, b):
        assert typed_rows(rep.query("SELECT a FROM t")) == [(typed(winner),)], rep


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv15_delete_beats_concurrent_updates(
    open_replica: OpenReplica, kind_a: str, kind_b: str
) -> None:
    a = open_replica(kind_a, T_SCHEMA, ["t"], site_id=A_SITE)
    b = open_replica(kind_b, T_SCHEMA, ["t"], site_id=B_SITE)
    a.execute("INSERT INTO t VALUES ('r1', 1, 'x')")
    sync(a, b)
    a.execute("DELETE FROM t WHERE id = 'r1'")
    b.execute("UPDATE t SET a = 2 WHERE id = 'r1'")
    b.execute("UPDATE t SET a = 3 WHERE id = 'r1'")
    sync(a, b)
    sync(b, a)
    for rep in (a, b):
        assert rep.query("SELECT * FROM t") == []
        assert meta(rep, pk_text("r1")) == [(SENTINEL, typed(None), 2, a.site_id, 2)], rep
    if kind_b == CRSQLITE:
        assert b.changes()[0][5] == 4


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv16_concurrent_reinserts_mix_columns(
    open_replica: OpenReplica, kind_a: str, kind_b: str
) -> None:
    a = open_replica(kind_a, T_SCHEMA, ["t"], site_id=A_SITE)
    b = open_replica(kind_b, T_SCHEMA, ["t"], site_id=B_SITE)
    a.execute("INSERT INTO t VALUES ('r1', 1, 'x')")
    sync(a, b)
    a.execute("DELETE FROM t")
    b.execute("DELETE FROM t")
    assert sync(a, b) == 0  # equal delete: no-op
    assert sync(b, a) == 0
    a.execute("INSERT INTO t VALUES ('r1', 2, 'p')")
    b.execute("INSERT INTO t VALUES ('r1', 3, 'o')")
    sync(a, b)
    sync(b, a)
    for rep, own in ((a, a.site_id), (b, b.site_id)):
        assert rep.query("SELECT * FROM t") == [("r1", 3, "p")], rep
        # equal-cl sentinels are not merged: each side keeps its own
        assert meta(rep, pk_text("r1")) == [
            (SENTINEL, typed(None), 3, own, 3),
            ("a", typed(3), 1, b.site_id, 3),
            ("b", typed("p"), 1, a.site_id, 3),
        ], rep


def resurrected_source(rep: Replica) -> None:
    """TV-21..23's A: insert, delete, insert (1, 1) in one transaction: cl 3, b @1."""
    for sql in (
        "BEGIN",
        "INSERT INTO foo VALUES (1, 1)",
        "DELETE FROM foo",
        "INSERT INTO foo VALUES (1, 1)",
        "COMMIT",
    ):
        rep.execute(sql)


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv20_resurrect_arrives_without_the_delete(
    open_replica: OpenReplica, kind_a: str, kind_b: str
) -> None:
    a = open_replica(kind_a, FOO_SCHEMA, ["foo"], site_id=A_SITE)
    b = open_replica(kind_b, FOO_SCHEMA, ["foo"], site_id=B_SITE)
    a.execute("INSERT INTO foo VALUES (1, 1)")
    a.version()
    for sql in (
        "BEGIN",
        "INSERT INTO foo VALUES (1, 1)",
        "UPDATE foo SET b = 2",
        "UPDATE foo SET b = 3",
        "UPDATE foo SET b = 4",
        "COMMIT",
    ):
        b.execute(sql)
    a.execute("DELETE FROM foo")
    after_delete = a.version()
    a.execute("INSERT INTO foo VALUES (1, 1)")
    sync(a, b, since=after_delete)
    expected = [(SENTINEL, typed(None), 3, a.site_id, 3), ("b", typed(1), 1, a.site_id, 3)]
    assert meta(b, PK1) == expected
    assert b.query("SELECT * FROM foo") == a.query("SELECT * FROM foo") == [(1, 1)]
    before = b.changes()
    assert sync(a, b) == 0
    assert b.changes() == before


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv21_resurrect_sentinel_reaches_a_live_row_first(
    open_replica: OpenReplica, kind_a: str, kind_b: str
) -> None:
    a = open_replica(kind_a, FOO_SCHEMA, ["foo"], site_id=A_SITE)
    b = open_replica(kind_b, FOO_SCHEMA, ["foo"], site_id=B_SITE)
    resurrected_source(a)
    b.execute("INSERT INTO foo VALUES (1, 1)")
    from_a = a.changes()
    assert sorted(c[2] for c in from_a) == [SENTINEL, "b"]
    (sentinel,) = [c for c in from_a if c[2] == SENTINEL]
    (cell,) = [c for c in from_a if c[2] == "b"]
    assert b.apply([sentinel]) == 1
    assert meta(b, PK1) == [
        (SENTINEL, typed(None), 3, a.site_id, 3),
        ("b", typed(1), 0, b.site_id, 3),  # zeroed, still attributed to B
    ]
    zeroed = {c[2]: c for c in b.changes()}
    assert zeroed["b"][5] == zeroed[SENTINEL][5]  # re-stamped with the merge's version
    assert b.apply([cell]) == 1
    assert meta(b, PK1) == [
        (SENTINEL, typed(None), 3, a.site_id, 3),
        ("b", typed(1), 1, a.site_id, 3),
    ]
    assert {c[2]: c for c in b.changes()}["b"][5] > zeroed["b"][5]
    assert b.query("SELECT * FROM foo") == [(1, 1)]


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv22_resurrect_cell_reaches_a_live_row_first(
    open_replica: OpenReplica, kind_a: str, kind_b: str
) -> None:
    a = open_replica(kind_a, FOO_SCHEMA, ["foo"], site_id=A_SITE)
    b = open_replica(kind_b, FOO_SCHEMA, ["foo"], site_id=B_SITE)
    resurrected_source(a)
    b.execute("INSERT INTO foo VALUES (1, 1)")
    (cell,) = [c for c in a.changes() if c[2] == "b"]
    assert b.apply([cell]) >= 1
    assert meta(b, PK1) == [
        (SENTINEL, typed(None), 3, a.site_id, 3),  # created with cv = cl
        ("b", typed(1), 1, a.site_id, 3),
    ]
    on_b = {c[2]: c for c in b.changes()}
    assert on_b[SENTINEL][8] == on_b["b"][8] == cell[8]  # the sentinel takes the cell's seq
    before = b.changes()
    assert sync(a, b) == 0
    assert b.changes() == before
    assert b.query("SELECT * FROM foo") == [(1, 1)]


@pytest.mark.parametrize("via", ["sentinel", "cell"])
@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS, ids=pair_ids)
def test_tv23_resurrect_a_dead_row(
    open_replica: OpenReplica, kind_a: str, kind_b: str, via: str
) -> None:
    a = open_replica(kind_a, FOO_SCHEMA, ["foo"], site_id=A_SITE)
    b = open_replica(kind_b, FOO_SCHEMA, ["foo"], site_id=B_SITE)
    resurrected_source(a)
    b.execute("INSERT INTO foo VALUES (1, 1)")
    b.execute("DELETE FROM foo")
    assert meta(b, PK1) == [(SENTINEL, typed(None), 2, b.site_id, 2)]
    cid = SENTINEL if via == "sentinel" else "b"
    (change,) = [c for c in a.changes() if c[2] == cid]
    assert b.apply([change]) >= 1
    if via == "sentinel":
        assert b.query("SELECT * FROM foo") == [(1, None)]  # back with defaults
        assert meta(b, PK1) == [(SENTINEL, typed(None), 3, a.site_id, 3)]
    else:
        assert b.query("SELECT * FROM foo") == [(1, 1)]
        assert meta(b, PK1) == [
            (SENTINEL, typed(None), 3, a.site_id, 3),
            ("b", typed(1), 1, a.site_id, 3),
        ]
        assert len({c[5] for c in b.changes()}) == 1  # sentinel and cell: one db_version
    sync(a, b)
    assert b.query("SELECT * FROM foo") == a.query("SELECT * FROM foo") == [(1, 1)]
