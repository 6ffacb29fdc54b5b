"""UPDATE OR REPLACE onto live keys and local ``seq`` order, against the real cr-sqlite 0.16.

* ``UPDATE OR REPLACE t SET id = <live key>``: both record the old key's delete (cl 2) and a
  ``"-1"`` record for the target *at its unchanged causal length* (cr-sqlite does so when the
  target has no ``"-1"`` record yet; crsync always, see docs/compatibility.md), so a concurrent
  edit of the target on another device is not wiped by a resurrection.
* ``seq``: for one local history, the change feed of each db_version lists the same records in
  the same order on both, across tables and statements of a transaction.

Moved cells are the documented difference: cr-sqlite moves their clocks unchanged, crsync
re-stamps them (``col_version`` above both rows' clocks, new db_version), so they are compared
by value and causal length only.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import pytest
from crsqlite import Change, CrSqlitePeerProcess
from hypothesis import given
from hypothesis import strategies as st
from replicas import CRSQLITE, CRSYNC, KINDS, Replica, cell_state, new_replica, table_rows, typed
from test_interop import (
    HISTORY_SCHEMA,
    HISTORY_TABLES,
    HYPOTHESIS,
    SENTINEL,
    Stmt,
    any_stmt,
    run_step,
    values,
)

import crsync

pytestmark = pytest.mark.interop

FOO = ["CREATE TABLE foo(a INTEGER PRIMARY KEY NOT NULL, b, c)"]


def pk_int(n: int) -> bytes:
    return crsync.pack_pk((n,))


def by_key(rep: Replica) -> dict[tuple[bytes, str], Change]:
    return {(c[1], c[2]): c for c in rep.changes()}


@pytest.mark.parametrize("kind", KINDS)
def test_update_or_replace_onto_a_live_key_records_what_cr_sqlite_records(
    crsqlite_peer: CrSqlitePeerProcess, kind: str
) -> None:
    reps = [new_replica(k, crsqlite_peer, FOO, ["foo"]) for k in (CRSYNC, CRSQLITE)]
    try:
        for rep in reps:
            rep.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
            v = rep.version()
            rep.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
            assert rep.version() == v + 1
            ch = by_key(rep)
            old, target = ch[(pk_int(1), SENTINEL)], ch[(pk_int(2), SENTINEL)]
            assert (old[4], old[5], old[7]) == (2, v + 1, 2), rep  # deleted
            assert (target[4], target[5], target[7]) == (1, v + 1, 1), rep  # cl kept at 1
            for col, val in (("b", "one"), ("c", "x")):
                cell = ch[(pk_int(2), col)]
                assert (cell[3], cell[7]) == (val, 1), rep
            assert old[8] < target[8], rep  # the old key's delete orders first
        assert table_rows(reps[0], "foo", "a") == table_rows(reps[1], "foo", "a")
        # and the record any of them sends leaves a third replica of either kind the same
        third = new_replica(kind, crsqlite_peer, FOO, ["foo"])
        third.apply(reps[0].changes())
        assert third.query("SELECT * FROM foo") == [(2, "one", "x")]
        third.close()
    finally:
        for rep in reps:
            rep.close()


@pytest.mark.parametrize("mover", KINDS)
@pytest.mark.parametrize("editor", KINDS)
def test_concurrent_edit_of_the_target_survives_update_or_replace(
    crsqlite_peer: CrSqlitePeerProcess, mover: str, editor: str
) -> None:
    """A replaces row 2 with row 1 while B edits row 2 (twice): on both kinds, B's edit
    survives and everyone converges; a cl bump on A (crsync before) wiped it."""
    a = new_replica(mover, crsqlite_peer, FOO, ["foo"])
    b = new_replica(editor, crsqlite_peer, FOO, ["foo"])
    watcher = new_replica(CRSQLITE if mover == CRSYNC else CRSYNC, crsqlite_peer, FOO, ["foo"])
    reps = [a, b, watcher]
    try:
        a.execute("INSERT INTO foo VALUES (1, 'one', 'x'), (2, 'two', 'y')")
        b.apply(a.changes())
        watcher.apply(a.changes())
        a.execute("UPDATE OR REPLACE foo SET a = 2 WHERE a = 1")
        b.execute("UPDATE foo SET b = 'bee' WHERE a = 2")
        b.execute("UPDATE foo SET b = 'bee!' WHERE a = 2")
        for _ in range(2):
            for src in reps:
                for dst in reps:
                    if src is not dst:
                        dst.apply(src.changes())
        rows = [rep.query("SELECT * FROM foo") for rep in reps]
        assert rows[1:] == rows[:-1], reps  # converged
        assert rows[0][0][:2] == (2, "bee!")  # the concurrent edit survived
        # c: a crsync mover re-stamps the moved cell, so 'x' reaches everyone; cr-sqlite moves
        # its clock unchanged (col_version 1 against the target's own 1): 'y' wins the tie
        # by value and the move's c is lost everywhere (the documented difference).
        assert rows[0][0][2] == ("x" if mover == CRSYNC else "y")
    finally:
        for rep in reps:
            rep.close()


# ------------------------------------------------------------------------------------------------
# random histories: UPDATE OR REPLACE onto live keys, pk moves, multi-table transactions

MOVE_SCHEMA = [*HISTORY_SCHEMA, "CREATE TABLE m(id INTEGER PRIMARY KEY NOT NULL, v, w)"]
MOVE_TABLES = {**HISTORY_TABLES, "m": "id"}
SOURCES = st.sampled_from([1, 2, 3])


@st.composite
def m_stmt(draw: st.DrawFn) -> Stmt:
    """Statements on m. ``("UOR", (src,))`` and ``("MOVE", (src,))`` are placeholders that
    get a fresh target key each (see moves_history)."""
    kind = draw(st.sampled_from(["insert", "insert", "update", "delete", "uor", "uor", "move"]))
    src = draw(SOURCES)
    if kind == "insert":
        return ("INSERT INTO m VALUES (?, ?, ?)", (src, draw(values), draw(values)))
    if kind == "update":
        col = draw(st.sampled_from(["v", "w"]))
        return (f"UPDATE m SET {col} = ? WHERE id = ?", (draw(values), draw(SOURCES)))
    if kind == "delete":
        return ("DELETE FROM m WHERE id = ?", (src,))
    return ("UOR" if kind == "uor" else "MOVE", (src,))


history_stmt = st.one_of(any_stmt, m_stmt(), m_stmt())


@st.composite
def moves_history(draw: st.DrawFn) -> list[list[Stmt]]:
    """Steps (autocommit statements or transactions of several tables). Each UPDATE OR
    REPLACE goes onto a key created just before by a plain INSERT and used once: a live key
    with no "-1" record, where cr-sqlite keeps the causal length (onto a live key that has
    one, cr-sqlite raises it by 2 and crsync does not: the documented difference). A plain
    move goes onto a fresh key."""
    steps: list[list[Stmt]] = []
    fresh = iter(range(100, 10_000))
    for _ in range(draw(st.integers(15, 40))):
        if draw(st.integers(0, 2)):
            body = [draw(history_stmt)]
        else:
            body = draw(st.lists(history_stmt, min_size=2, max_size=6))
        out: list[Stmt] = []
        for sql, params in body:
            if sql == "UOR":
                target = next(fresh)
                out.append(("INSERT INTO m VALUES (?, ?, ?)", (target, draw(values), "t")))
                out.append(("UPDATE OR REPLACE m SET id = ? WHERE id = ?", (target, *params)))
            elif sql == "MOVE":
                out.append(("UPDATE m SET id = ? WHERE id = ?", (next(fresh), *params)))
            else:
                out.append((sql, params))
        if len(out) == 1:
            steps.append(out)
        else:
            end = draw(st.sampled_from(["COMMIT", "COMMIT", "COMMIT", "ROLLBACK"]))
            steps.append([("BEGIN", ()), *out, (end, ())])
    return steps


Record = tuple[str, bytes, str]


def feed_positions(changes: Sequence[Change]) -> dict[Record, tuple[int, int, int]]:
    """(table, pk, cid) -> (db_version, seq, col_version)."""
    return {(c[0], c[1], c[2]): (c[5], c[8], c[4]) for c in changes}


@HYPOTHESIS
@given(history=moves_history())
def test_random_histories_with_replaces_match_cr_sqlite_in_state_and_seq_order(
    crsqlite_peer: CrSqlitePeerProcess, history: list[list[Stmt]]
) -> None:
    ours = new_replica(CRSYNC, crsqlite_peer, MOVE_SCHEMA, list(MOVE_TABLES))
    theirs = new_replica(CRSQLITE, crsqlite_peer, MOVE_SCHEMA, list(MOVE_TABLES))
    try:
        for stmts in history:
            assert run_step(ours, stmts) == run_step(theirs, stmts), stmts
            ours.version()  # one crsync version per transaction, as cr-sqlite numbers them
        for table, order in MOVE_TABLES.items():
            assert table_rows(ours, table, order) == table_rows(theirs, table, order), table
        mine, their = ours.changes(), theirs.changes()
        # Replicated state: exact, except moved cells' col_version (re-stamped by crsync).
        assert {c for c in cell_state(mine) if c[0] != "m"} == {
            c for c in cell_state(their) if c[0] != "m"
        }

        def m_state(ch: Sequence[Change]) -> set[tuple[object, ...]]:
            return {
                (c[1], c[2], typed(c[3]), c[4] if c[2] == SENTINEL else None, c[7])
                for c in ch
                if c[0] == "m"
            }

        assert m_state(mine) == m_state(their)
        # Local seqs never repeat within a db_version.
        assert not [k for k, n in Counter((c[5], c[8]) for c in mine).items() if n > 1]
        # Per db_version, the same records in the same order. Records whose clock differs
        # (moved cells) are left out: cr-sqlite keeps them in their old version.
        pos_s, pos_c = feed_positions(mine), feed_positions(their)
        common = sorted(k for k in pos_s.keys() & pos_c.keys() if pos_s[k][2] == pos_c[k][2])
        assert len(common) >= len(pos_s) // 2
        for i, x in enumerate(common):
            for y in common[i + 1 :]:
                same_s = pos_s[x][0] == pos_s[y][0]
                assert same_s == (pos_c[x][0] == pos_c[y][0]), (x, y, pos_s, pos_c)
                if same_s:
                    assert (pos_s[x][1] < pos_s[y][1]) == (pos_c[x][1] < pos_c[y][1]), (
                        x,
                        y,
                        pos_s[x],
                        pos_s[y],
                        pos_c[x],
                        pos_c[y],
                    )
    finally:
        ours.close()
        theirs.close()
