"""What a store records besides cells, on both backends: peer positions, site bindings, the
announced schema, epochs, reactor state, repairs, isolation between stores."""

from __future__ import annotations

from typing import Any

import pytest

import crsync
from crsync import pack_pk
from crsync.protocol import TableSchema

from .helpers import SCHEMA, A, B, cell, row, sentinel, state

# ---------------------------------------------------------------------------- peers


def test_peer_positions_only_move_forward(store: Any) -> None:
    assert store.peer(A) == store.peer(A)
    assert (store.peer(A).pushed_upto, store.peer(A).received_upto) == (0, 0)
    assert store.peer(A).last_seen is None
    store.merge_push(A, 7, [])
    store.merge_push(A, 3, [cell("k", "title", "x")])
    store.record_received(A, 4)
    store.record_received(A, 2)
    p = store.peer(A)
    assert (p.site_id, p.pushed_upto, p.received_upto) == (A, 7, 4)
    assert p.last_seen is not None
    assert store.peer(B).pushed_upto == 0


def test_a_site_binds_to_its_first_key(store: Any) -> None:
    assert store.bind_site(A, None) is None  # an older client: not bound
    assert store.bind_site(A, b"key-a") is None
    assert store.bind_site(A, b"key-a") is None
    other = store.bind_site(A, b"key-b")
    assert other is not None and "bound to another device's key" in other
    assert store.bind_site(A, None) is not None  # a bound site needs its key
    store.merge_push(A, 5, [])  # positions and binding share the peer's row
    assert store.bind_site(A, b"key-a") is None and store.peer(A).pushed_upto == 5


# ---------------------------------------------------------------------------- schema


def test_schema_additions_are_recorded_and_constraints_intersected(store: Any) -> None:
    assert store.check_schema({"t": TableSchema(("id",), ("a", "b"), ("a", "b"), True)}) is None
    assert store.check_schema({"t": TableSchema(("id",), ("c",), ("a",), False)}) is None
    assert store.check_schema({"u": TableSchema(("k",), ("v",))}) is None
    got = store.schema()
    assert got["t"] == TableSchema(("id",), ("a", "b", "c"), ("a",), False)
    assert got["u"] == TableSchema(("k",), ("v",))
    assert store.check_schema({"t": TableSchema(("id",), ("a",))}) is None  # nothing new


def test_an_incompatible_key_is_refused_naming_table_and_difference(store: Any) -> None:
    assert store.check_schema(dict(SCHEMA)) is None
    problem = store.check_schema({"todos": TableSchema(("id", "owner"), ("title",))})
    assert problem is not None
    assert "'todos'" in problem and "['id']" in problem and "['id', 'owner']" in problem
    # nothing of a refused announcement is recorded, not even its new tables
    problem = store.check_schema(
        {"new": TableSchema(("k",), ()), "notes": TableSchema(("b", "a"), ("body",))}
    )
    assert problem is not None and "'notes'" in problem
    assert "new" not in store.schema()


def test_overlong_names_are_refused_and_the_store_stays_usable(store: Any) -> None:
    assert "longer than" in store.check_schema({"t" * 5000: TableSchema(("k",), ())})
    assert "longer than" in store.check_schema({"t": TableSchema(("k",), ("c" * 5000,))})
    assert store.check_schema({"ok": TableSchema(("k",), ())}) is None
    assert store.schema() == {"ok": TableSchema(("k",), ())}


def test_table_names_are_data(store: Any) -> None:
    odd = 'we"ird; DROP TABLE x; -- \u2603'
    assert store.check_schema({odd: TableSchema(("k",), ("v",))}) is None
    assert store.merge_push(A, 1, [cell(1, "v", "x", table=odd)], announced_only=True) == (1, 1)
    assert row(store, 1, odd) == {"v": ("x", 1, 1)}
    assert list(store.schema()) == [odd]


# ---------------------------------------------------------------------------- epochs


def test_the_epoch_is_stable_across_reopen_and_new_for_a_new_store(make_store: Any) -> None:
    s1 = make_store("one")
    epoch = s1.epoch
    assert isinstance(epoch, str) and len(epoch) == 32
    s1.merge_push(A, 1, [cell("k", "title", "x")])
    s1.close()
    s2 = make_store("one", create=False)
    assert s2.epoch == epoch and s2.head == 1
    assert make_store("two").epoch != epoch


def test_opening_a_missing_store_without_create_is_refused(make_store: Any) -> None:
    with pytest.raises(crsync.CrsyncError, match="no store"):
        make_store("missing", create=False)


def test_forget_table_removes_its_cells_and_gives_a_new_epoch(make_store: Any) -> None:
    s = make_store("f")
    assert s.check_schema(dict(SCHEMA)) is None
    epoch = s.epoch
    s.merge_push(A, 1, [cell("k", "title", "x"), cell((1, "b"), "body", "y", table="notes")])
    assert s.forget_table("todos") == 1
    assert "todos" not in s.schema() and "notes" in s.schema()
    assert [c[0] for c in state(s)] == ["notes"]
    again = make_store("f", create=False)
    assert again.epoch != epoch
    with pytest.raises(crsync.CrsyncError, match="no table"):
        again.forget_table("never")


def test_remove_cells_removes_a_cell_or_a_row(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "x"), cell("k", "done", 1), sentinel("j", 1)])
    assert store.remove_cells("todos", pack_pk(["k"]), "done") == 1
    assert row(store, "k") == {"title": ("x", 1, 1)}
    assert store.remove_cells("todos", pack_pk(["j"]), None) == 1
    assert store.remove_cells("todos", pack_pk(["nothing"]), None) == 0
    assert [c[2] for c in state(store)] == ["title"]


# ---------------------------------------------------------------------------- reactor


def test_reactor_state_mints_one_site_and_keeps_the_cursor(store: Any) -> None:
    assert store.relay_site() is None
    site, cursor = store.reactor_state()
    assert cursor == 0 and store.reactor_state() == (site, 0)
    assert store.relay_site() == site
    store.save_reactor_cursor(3)
    assert store.reactor_state() == (site, 3)
    store.set_aside_reactor_batch(3, 9, "it failed\x00 thrice")
    assert store.reactor_state() == (site, 9)


# ---------------------------------------------------------------------------- stats, sizes


def test_stats_report_head_cells_peers_and_size(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "x"), cell("k", "done", 1)])
    store.record_received(B, 1)
    s = store.stats()
    assert s["epoch"] == store.epoch and s["head"] == 1
    assert s["cells"] == 2 and s["peers"] == 2
    assert s["last_activity"] is not None and s["bytes"] > 0


def test_data_bytes_grow_with_the_data(store: Any) -> None:
    before = store.data_bytes()
    store.merge_push(A, 1, [cell(str(i), "data", b"x" * 4000) for i in range(200)])
    assert store.data_bytes() >= before + 200 * 4000
    assert store.size_bytes() > 0


# ---------------------------------------------------------------------------- isolation


def test_stores_are_isolated(make_store: Any) -> None:
    one, two = make_store("iso1"), make_store("iso2")
    assert one.check_schema(dict(SCHEMA)) is None
    one.merge_push(A, 4, [cell("k", "title", "only in one")])
    one.bind_site(A, b"key")
    one.reactor_state()
    assert two.head == 0 and two.schema() == {} and state(two) == []
    assert two.peer(A).pushed_upto == 0 and two.bind_site(A, b"other") is None
    assert two.relay_site() is None
    two.merge_push(B, 1, [cell("k", "title", "only in two", site=B)])
    assert one.head == 1 and two.head == 1  # versions are per store
    assert row(one, "k")["title"][0] == "only in one"
    assert row(two, "k")["title"][0] == "only in two"
    one.forget_table("todos")
    assert row(two, "k") != {}
