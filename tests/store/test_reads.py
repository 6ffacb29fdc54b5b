"""Catch-up reads, on both backends: pages of whole versions, a site's own cells left out,
versions larger than the budget read in parts."""

from __future__ import annotations

from typing import Any

from .helpers import A, B, cell, feed, read_version_1_in_parts, state


def _push_versions(store: Any, sizes: list[int]) -> None:
    for n, (i, site) in zip(sizes, enumerate([A, B] * len(sizes)), strict=False):
        changes = [
            cell((j, f"v{i}"), "body", "x" * j, site=site, table="notes", seq=j) for j in range(n)
        ]
        store.merge_push(site, i + 1, changes)


def test_pages_hold_whole_versions_and_cover_everything(store: Any) -> None:
    sizes = [3, 1, 8, 2, 2, 5]
    _push_versions(store, sizes)
    assert store.head == len(sizes)
    everything, upto, complete = store.changes_since(0, None, 10**6)
    assert complete and upto == store.head and len(everything) == sum(sizes)
    cursor, seen, pages = 0, [], 0
    while True:
        changes, upto, complete = store.changes_since(cursor, None, max_cells=5)
        versions = {c.db_version for c in changes}
        assert all(cursor < v <= upto for v in versions)
        for v in versions:  # every version of a page is whole
            assert sum(1 for c in changes if c.db_version == v) == sizes[v - 1]
        assert len(changes) <= 5 or len(versions) == 1  # only one big version exceeds it
        seen += changes
        cursor, pages = upto, pages + 1
        if complete:
            break
    assert pages > 2
    assert sorted(seen, key=repr) == sorted(everything, key=repr)
    assert store.changes_since(store.head, None) == ([], store.head, True)


def test_a_sites_own_pushes_are_left_out(store: Any) -> None:
    _push_versions(store, [2, 3, 4])
    only_b, upto, complete = store.changes_since(0, A, 10**6)
    assert complete and upto == 3
    assert len(only_b) == 3 and {c.site_id for c in only_b} == {B}
    # Left out by the pushing connection's site, whatever author a cell claims.
    store.merge_push(B, 9, [cell("k", "title", "by A, pushed by B", site=A)])
    assert [c.val for c in store.changes_since(3, B)[0]] == []
    assert [c.val for c in store.changes_since(3, A)[0]] == ["by A, pushed by B"]


def test_a_version_larger_than_the_budget_is_read_in_parts(store: Any) -> None:
    store.merge_push(
        A, 1, [cell((i, "x"), "body", "y" * 1000, table="notes", seq=i) for i in range(300)]
    )
    store.merge_push(A, 2, [cell("after", "title", "t")])
    whole = store.changes_since(0, None, 10**6)[0]
    assert len(whole) == 301
    seen, page, parts = read_version_1_in_parts(store)
    assert page.upto == 1 and not page.complete  # version 2 is still to read
    assert parts > 5
    assert sorted(c.as_tuple() for c in seen) == sorted(
        c.as_tuple() for c in whole if c.db_version == 1
    )
    rest = store.read_page(1, None)
    assert rest.complete and rest.upto == 2 and [c.val for c in rest.changes] == ["t"]


def test_whole_versions_without_split_even_when_over_budget(store: Any) -> None:
    store.merge_push(A, 1, [cell(str(i), "title", "x") for i in range(50)])
    changes, upto, complete = store.changes_since(0, None, max_cells=10)
    assert len(changes) == 50 and upto == 1 and complete


def test_values_of_every_type_read_back_exactly(store: Any) -> None:
    values = [
        None, 0, -1, (1 << 63) - 1, -(1 << 63), 0.0, -0.0, 1.5, float("inf"), float("-inf"),
        5e-324, "", "text", "a\x00b", "é\u2603\U0001f600", b"", b"\x00\xff", b"x" * 5000,
    ]  # fmt: skip
    store.merge_push(A, 1, [cell(i, "data", v) for i, v in enumerate(values)])
    got = {c.pk: c.val for c in store.changes_since(0, None)[0]}
    from crsync import pack_pk

    for i, v in enumerate(values):
        w = got[pack_pk([i])]
        assert type(w) is type(v) and repr(w) == repr(v)


def test_reads_from_a_reopened_store_see_the_same_feed(make_store: Any) -> None:
    s1 = make_store("x")
    _push_versions(s1, [2, 2])
    before = feed(s1)
    s1.close()
    s2 = make_store("x", create=False)
    assert feed(s2) == before and state(s2)
