"""The two backends are one store: random pushes applied to both give the same answers, the
same relay state and the same feeds (property-based)."""

from __future__ import annotations

import functools
import uuid
from pathlib import Path
from typing import Any

import pytest
from crsync_relay.store import RelayStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crsync import Change, pack_pk
from crsync.protocol import TableSchema

from .helpers import feed

SITES = [bytes([i]) * 16 for i in (1, 2, 3)]
values = st.one_of(
    st.none(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.sampled_from([0, 1, -1, 0.0, -0.0, 1.0, float("inf")]),
    st.floats(allow_nan=False),
    st.text(max_size=6),
    st.sampled_from(["", "a", "b", "a\x00", "\x00"]),
    st.binary(max_size=6),
)


@st.composite
def changes(draw: st.DrawFn) -> Change:
    table = draw(st.sampled_from(["t1", "t2"]))
    key = draw(st.integers(0, 3))
    cl = draw(st.integers(1, 4))
    site = draw(st.sampled_from(SITES))
    seq = draw(st.integers(0, 2))
    if draw(st.integers(0, 4)) == 0:
        return Change(table, pack_pk([key]), "-1", None, cl, 1, site, cl, seq)
    cid = draw(st.sampled_from(["a", "b"]))
    return Change(
        table, pack_pk([key]), cid, draw(values), draw(st.integers(1, 3)), 1, site, cl, seq
    )


pushes = st.lists(
    st.tuples(st.sampled_from(SITES), st.lists(changes(), min_size=0, max_size=6), st.booleans()),
    min_size=1,
    max_size=8,
)
schemas = st.lists(
    st.fixed_dictionaries(
        {
            "t1": st.builds(
                TableSchema,
                st.just(("id",)),
                st.sets(st.sampled_from(["a", "b", "c"])).map(lambda s: tuple(sorted(s))),
                st.sets(st.sampled_from(["a", "b"])).map(lambda s: tuple(sorted(s))),
                st.booleans(),
            ),
            "t2": st.sampled_from(
                [TableSchema(("id",), ("a", "b")), TableSchema(("id", "x"), ("a",))]
            ),
        }
    ),
    max_size=3,
)


def _outcome(call: Any) -> Any:
    """A call's result, or its error's type and message."""
    try:
        return call()
    except Exception as exc:
        return (type(exc).__name__, str(exc))


def _answers(s: Any) -> dict[str, Any]:
    small = []
    cursor = 0
    while True:  # a small budget: the same page boundaries on both
        changes_, upto, complete = s.changes_since(cursor, None, max_cells=3)
        small.append((upto, complete, sorted((c.as_tuple() for c in changes_), key=repr)))
        cursor = upto
        if complete:
            break
    return {
        "head": s.head,
        "feed": feed(s),
        "pages": small,
        "excluding": [
            sorted((c.as_tuple() for c in s.changes_since(0, site)[0]), key=repr) for site in SITES
        ],
        "rows": {
            (t, k): sorted(s.row_cells(t, pack_pk([k])), key=repr)
            for t in ("t1", "t2")
            for k in range(4)
        },
        "peers": [(p.pushed_upto, p.received_upto) for p in map(s.peer, SITES)],
    }


def _typed(x: Any) -> Any:
    """Values with their types made visible (1 == 1.0 and 0.0 == -0.0 in Python)."""
    return repr(x)


@pytest.mark.slow
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schemas, pushes)
def test_random_pushes_give_the_same_store_on_both_backends(
    pg_database: Any,
    tmp_path: Path,
    announcements: list[dict[str, TableSchema]],
    units: list[tuple[bytes, list[Change], bool]],
) -> None:
    """Announcements (accepted or refused, with the same message), pushes from devices
    (``announced_only``) and internal writers: the same outcome on both, then the same
    store."""
    sqlite_store = RelayStore(tmp_path / f"{uuid.uuid4().hex}.store.sqlite3")
    pg_store = pg_database.open_store(f"eq-{uuid.uuid4().hex[:12]}")
    both = (sqlite_store, pg_store)
    try:
        for schema in announcements:
            got = [_outcome(functools.partial(s.check_schema, dict(schema))) for s in both]
            assert got[0] == got[1]
        assert sqlite_store.schema() == pg_store.schema()
        for i, (site, unit, limited) in enumerate(units):
            got = [
                _outcome(functools.partial(s.merge_push, site, i + 1, unit, announced_only=limited))
                for s in both
            ]
            assert got[0] == got[1], (i, got)
        assert _typed(_answers(sqlite_store)) == _typed(_answers(pg_store))
    finally:
        sqlite_store.close()
        pg_database.drop_store(pg_store.store_id)
