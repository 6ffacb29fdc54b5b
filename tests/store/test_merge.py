"""Merging pushes into a store, on both backends: the CRDT rules (crdt-semantics.md §6),
idempotence, refusals, relay versions."""

from __future__ import annotations

from typing import Any

import pytest

from crsync import Change, InvalidChangeError, pack_pk

from .helpers import SCHEMA, A, B, cell, feed, row, sentinel, state


def test_higher_col_version_wins_lower_loses(store: Any) -> None:
    assert store.merge_push(A, 1, [cell("k", "title", "v1", 1)]) == (1, 1)
    assert store.merge_push(B, 1, [cell("k", "title", "v3", 3, site=B)]) == (2, 1)
    assert store.merge_push(A, 2, [cell("k", "title", "v2", 2)]) == (2, 0)  # loses: no version
    assert row(store, "k") == {"title": ("v3", 3, 1)}
    assert store.head == 2


@pytest.mark.parametrize(
    ("local", "incoming", "winner"),
    [
        ("a", "b", "b"),  # text: greater UTF-8 bytes win
        ("b", "a", "b"),
        (1, 1.5, 1),  # INTEGER beats REAL
        (2.5, "z", 2.5),  # REAL beats TEXT
        ("a", b"a", "a"),  # TEXT beats BLOB
        (b"\x01", None, b"\x01"),  # BLOB beats NULL
        (None, 0, 0),
        (-(1 << 63), (1 << 63) - 1, (1 << 63) - 1),
        ("same", "same", "same"),
    ],
    ids=repr,
)
def test_equal_col_versions_tie_break_on_the_value(
    store: Any, local: object, incoming: object, winner: object
) -> None:
    store.merge_push(A, 1, [cell("k", "title", local, 2)])
    head, wins = store.merge_push(B, 1, [cell("k", "title", incoming, 2, site=B)])
    assert row(store, "k")["title"][0] == winner
    assert type(row(store, "k")["title"][0]) is type(winner)
    assert (head, wins) == ((2, 1) if winner is incoming and local != incoming else (1, 0))


def test_a_delete_drops_the_cells_and_keeps_the_sentinel(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "t"), cell("k", "done", 1)])
    store.merge_push(B, 1, [sentinel("k", 2, site=B)])
    assert row(store, "k") == {"-1": (None, 2, 2)}
    # Writes of the older incarnation lose, whatever their col_version.
    assert store.merge_push(A, 2, [cell("k", "title", "late", 99, cl=1)]) == (2, 0)
    # The same delete again: nothing.
    assert store.merge_push(C := bytes(16), 1, [sentinel("k", 2, site=C)])[1] == 0


def test_a_reinsert_with_a_higher_causal_length_resurrects_the_row(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "t", 5)])
    store.merge_push(A, 2, [sentinel("k", 2)])
    head, wins = store.merge_push(
        B, 1, [sentinel("k", 3, site=B), cell("k", "title", "new", 1, cl=3, site=B)]
    )
    assert wins == 2 and head == 3
    assert row(store, "k") == {"-1": (None, 3, 3), "title": ("new", 1, 3)}
    # A delete of an older causal length loses; a later one wins.
    assert store.merge_push(A, 3, [sentinel("k", 2)])[1] == 0
    assert store.merge_push(A, 4, [sentinel("k", 4)])[1] == 1
    assert row(store, "k") == {"-1": (None, 4, 4)}


def test_a_cell_with_a_higher_causal_length_resurrects_and_zeroes_other_clocks(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "t", 4), cell("k", "done", 7, 2)])
    store.merge_push(B, 1, [cell("k", "title", "x", 1, cl=3, site=B)])
    got = row(store, "k")
    assert got["title"] == ("x", 1, 3)
    assert got["done"] == (7, 0, 3)  # kept, clock zeroed
    assert got["-1"][1:] == (3, 3)


def test_merge_is_idempotent_and_order_independent(store: Any) -> None:
    changes = [cell(str(i), "title", f"t{i}", 1 + i % 3) for i in range(30)]
    changes += [sentinel("3", 2), cell(("4",), "done", 1, 2)]
    head, wins = store.merge_push(A, 5, changes)
    assert head == 1 and wins > 0
    before = state(store)
    for _ in range(2):
        assert store.merge_push(A, 5, changes) == (1, 0)
        assert store.merge_push(A, 5, changes[::-1]) == (1, 0)
    assert state(store) == before and store.head == 1


def test_every_winning_push_makes_exactly_one_version_tagged_on_its_cells(store: Any) -> None:
    for i in range(5):
        store.merge_push(A, i + 1, [cell(str(i), "title", "x"), cell(str(i), "done", i)])
    versions = feed(store)
    assert [v for v, _ in versions] == [1, 2, 3, 4, 5]
    assert all(len(cs) == 2 for _, cs in versions)


def test_unchanged_cells_keep_their_version_when_the_row_changes(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", "title", "t"), cell("k", "done", 0)])
    store.merge_push(A, 2, [cell("k", "done", 1, 2)])
    got = {c[2]: c[5] for c in state(store)}
    assert got == {"title": 1, "done": 2}


def test_a_deleted_row_keeps_only_its_sentinel(store: Any) -> None:
    store.merge_push(A, 1, [cell("k", c, "v") for c in ("title", "done", "data")])
    store.merge_push(A, 2, [sentinel("k", 2)])
    assert [(c[2], c[7]) for c in state(store)] == [("-1", 2)]


@pytest.mark.parametrize(
    "bad",
    [
        Change("todos", b"\x07garbage", "title", 1, 1, 1, A, 1, 0),
        Change("todos", pack_pk([None]), "title", 1, 1, 1, A, 1, 0),
        Change("todos", pack_pk([]), "title", 1, 1, 1, A, 1, 0),
        Change("todos", pack_pk(["a", "b"]), "title", 1, 1, 1, A, 1, 0),
        Change("notes", pack_pk([1]), "body", 1, 1, 1, A, 1, 0),
        Change("notes", pack_pk([float("nan"), "x"]), "body", 1, 1, 1, A, 1, 0),
        Change("t" * 3000, pack_pk([1]), "body", 1, 1, 1, A, 1, 0),
        Change("todos", pack_pk([1]), "c" * 3000, 1, 1, 1, A, 1, 0),
    ],
    ids=["garbage-pk", "null-pk", "empty-pk", "pk-too-long", "pk-too-short", "nan-pk",
         "long-table", "long-column"],
)  # fmt: skip
def test_a_unit_devices_could_not_apply_is_refused_whole(store: Any, bad: Change) -> None:
    assert store.check_schema(dict(SCHEMA)) is None
    good = cell("ok", "title", "x")
    with pytest.raises(InvalidChangeError):
        store.merge_push(A, 1, [good, bad])
    assert store.head == 0 and state(store) == []
    assert store.peer(A).pushed_upto == 0
    assert store.merge_push(A, 1, [good]) == (1, 1)  # the store stays usable


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (cell("k", "title", "x", table="other"), "was not announced"),
        (cell("k", "nope", "x"), "no announced column"),
        (cell(("1", "b"), "body", None, table="notes"), "NOT NULL"),
        (cell("text-key", "v", 1, table="ints"), "not an integer"),
    ],
    ids=["table", "column", "not-null", "integer-key"],
)
def test_announced_only_refuses_what_no_hello_announced(
    store: Any, change: Change, why: str
) -> None:
    from crsync.protocol import TableSchema

    schema = dict(SCHEMA)
    schema["notes"] = TableSchema(("a", "b"), ("body",), ("body",))
    schema["ints"] = TableSchema(("id",), ("v",), (), True)
    assert store.check_schema(schema) is None
    with pytest.raises(InvalidChangeError, match=why):
        store.merge_push(A, 1, [change], announced_only=True)
    assert store.merge_push(A, 1, [change])[0] == 1  # an internal writer is not limited


def test_announced_only_ignores_changes_claiming_the_reactors_site(store: Any) -> None:
    site, cursor = store.reactor_state()
    assert cursor == 0 and len(site) == 16
    assert store.check_schema(dict(SCHEMA)) is None
    forged = cell("k", "title", "forged", 9, site=site)
    honest = cell("j", "title", "honest", site=A)
    head, wins = store.merge_push(A, 1, [forged, honest], announced_only=True)
    assert (head, wins) == (1, 1)
    assert row(store, "k") == {} and row(store, "j")["title"][0] == "honest"


def test_an_empty_push_records_the_position_without_a_version(store: Any) -> None:
    assert store.merge_push(A, 7, []) == (0, 0)
    assert store.merge_push(A, 3, []) == (0, 0)
    assert store.peer(A).pushed_upto == 7
    assert store.head == 0


def test_merge_meta_moves_the_reactor_cursor_with_the_unit(store: Any) -> None:
    site, _ = store.reactor_state()
    store.merge_push(site, 1, [cell("k", "title", "r", site=site)], {"reactor_cursor": 5})
    assert store.reactor_state() == (site, 5)
    assert store.relay_site() == site
