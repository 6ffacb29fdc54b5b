"""Concurrent pushes to one store, on both backends: relay versions commit in order, so a
reader never sees a version before every earlier one (no gap a peer's cursor could skip)."""

from __future__ import annotations

import threading
from typing import Any

from .helpers import A, cell

WRITERS = 4
PUSHES = 12
CELLS = 3


def _run_writers_and_reader(open_writer: Any, reader: Any) -> list[int]:
    """WRITERS threads push PUSHES units of CELLS new cells each while a reader catches up
    page by page; returns the versions the reader saw, in order."""
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []
    start = threading.Barrier(WRITERS + 1)

    def write(w: int) -> None:
        try:
            s = open_writer()
            start.wait(timeout=30)
            site = bytes([w + 1]) * 16
            for i in range(PUSHES):
                s.merge_push(
                    site, i + 1, [cell(f"{w}-{i}-{j}", "title", j, site=site) for j in range(CELLS)]
                )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def read() -> None:
        try:
            start.wait(timeout=30)
            cursor = 0
            while True:
                finished = done.is_set()  # read before the page: a last full pass follows
                changes, upto, complete = reader.changes_since(cursor, None, max_cells=7)
                counts: dict[int, int] = {}
                for c in changes:
                    counts[c.db_version] = counts.get(c.db_version, 0) + 1
                # Every version between the cursor and upto, each whole: no gap, no part.
                assert sorted(counts) == list(range(cursor + 1, upto + 1)), (cursor, upto, counts)
                assert all(n == CELLS for n in counts.values()), counts
                seen.extend(sorted(counts))
                cursor = upto
                if finished and complete:
                    return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(w,)) for w in range(WRITERS)]
    threads.append(threading.Thread(target=read))
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join(timeout=120)
    done.set()
    threads[-1].join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread did not finish in time"
    if errors:
        raise errors[0]
    return seen


def test_concurrent_pushes_make_gap_free_versions_a_reader_sees_in_order(
    make_store: Any,
) -> None:
    reader = make_store("c")
    seen = _run_writers_and_reader(lambda: make_store("c"), reader)
    assert seen == list(range(1, WRITERS * PUSHES + 1))
    assert reader.head == WRITERS * PUSHES
    assert reader.peer(bytes([1]) * 16).pushed_upto == PUSHES


def test_concurrent_pushes_from_two_nodes_stay_gap_free(pg_server: Any, pg_database: Any) -> None:
    """Two pools (two relay nodes) write one PostgreSQL store; a third instance reads."""
    from crsync_relay.pg_store import PgDatabase

    nodes = [PgDatabase(pg_server.conninfo("crsync_store_tests"), max_size=3) for _ in range(2)]
    try:
        turn = iter(range(10**6))
        seen = _run_writers_and_reader(
            lambda: nodes[next(turn) % 2].open_store("two-nodes"),
            pg_database.open_store("two-nodes"),
        )
        assert seen == list(range(1, WRITERS * PUSHES + 1))
    finally:
        for n in nodes:
            n.close()


def test_schema_announcements_on_two_nodes_at_once_keep_every_column(
    pg_server: Any, pg_database: Any
) -> None:
    """Each node records what its device announced: neither overwrites the other's columns."""
    from crsync_relay.pg_store import PgDatabase

    from crsync.protocol import TableSchema

    nodes = [PgDatabase(pg_server.conninfo("crsync_store_tests"), max_size=2) for _ in range(2)]
    try:
        stores = [n.open_store("schema-race") for n in nodes]
        for s in stores:
            s.schema()  # both cache the empty schema first
        errors: list[BaseException] = []
        for round_ in range(8):
            table = f"t{round_}"
            barrier = threading.Barrier(2)

            def announce(i: int, table: str = table, barrier: threading.Barrier = barrier) -> None:
                try:
                    barrier.wait(timeout=30)
                    stores[i].check_schema({table: TableSchema(("id",), (f"col{i}",))})
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=announce, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors
            for s in [*stores, pg_database.open_store("schema-race")]:
                assert s.schema()[table].columns == ("col0", "col1")
    finally:
        for n in nodes:
            n.close()


def test_an_empty_store_reads_as_complete(make_store: Any) -> None:
    s = make_store("e")
    assert s.changes_since(0, A) == ([], 0, True)
