"""Live queries (db.watch) and change notifications on one device."""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from pathlib import Path

import anyio
import pytest

import crsync
from crsync.live import LiveQuery, RowChange

pytestmark = pytest.mark.anyio

LIMIT = 10.0


def make(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)")
    db.conn.execute("CREATE TABLE u (id INTEGER PRIMARY KEY, y TEXT)")
    db.conn.execute("CREATE TABLE plain (k TEXT PRIMARY KEY, v TEXT)")  # not replicated
    db.track("t", integer_keys="app-assigned")
    db.track("u", integer_keys="app-assigned")
    return db


async def until_engine_looked(live: LiveQuery, looks: int) -> None:
    """Wait until the engine noticed a commit after ``looks`` (polls its counter)."""
    assert live.engine is not None
    while live.engine.looks <= looks:  # noqa: ASYNC110 - the engine exposes no event for this
        await anyio.sleep(0.01)


async def nothing_within(live: LiveQuery, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        rows = await live.__anext__()
        raise AssertionError(f"unexpected result {rows}")


async def test_watch_yields_now_then_after_local_writes_on_any_connection(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    other = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT id, x FROM t ORDER BY id") as live:
            assert await live.__anext__() == []
            db.conn.execute("INSERT INTO t VALUES (1, 'a')")
            assert await live.__anext__() == [(1, "a")]
            other.execute("UPDATE t SET x = 'b' WHERE id = 1")
            assert await live.__anext__() == [(1, "b")]
            assert live.tables == {"t"}


async def test_watch_does_not_rerun_for_writes_to_tables_it_does_not_read(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT count(*) FROM t") as live:
            assert await live.__anext__() == [(0,)]
            assert live.engine is not None
            looks = live.engine.looks
            db.conn.execute("INSERT INTO u VALUES (1, 'z')")
            await until_engine_looked(live, looks)
            assert live.runs == 1
            db.conn.execute("INSERT INTO t VALUES (1, 'a')")
            assert await live.__anext__() == [(1,)]
            assert live.runs == 2


async def test_watch_sees_writes_from_another_process(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute(\"INSERT INTO t VALUES (7, 'from another process')\")"
    )
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT x FROM t WHERE id = 7") as live:
            assert await live.__anext__() == []
            await anyio.run_process([sys.executable, "-c", code, str(tmp_path / "a.db")])
            assert await live.__anext__() == [("from another process",)]


async def test_watch_sees_merged_remote_changes_and_feed_marks_them_remote(
    tmp_path: Path,
) -> None:
    a, b = make(tmp_path / "a.db"), make(tmp_path / "b.db")
    a.conn.execute("INSERT INTO t VALUES (1, 'remote')")
    with anyio.fail_after(LIMIT):
        async with b.watch("SELECT x FROM t") as live, b.changes_feed() as feed:
            assert await live.__anext__() == []
            b.merge(a.changes())
            assert await live.__anext__() == [("remote",)]
            got = await feed.__anext__()
            assert got == [
                RowChange("t", (1,), False, a.site_id, frozenset({"x"}), False, got[0].db_version)
            ]
            b.conn.execute("DELETE FROM t WHERE id = 1")
            assert await live.__anext__() == []
            (note,) = await feed.__anext__()
            assert (note.table, note.pk, note.local, note.deleted) == ("t", (1,), True, True)


async def test_writes_at_one_open_version_from_fresh_connections_each_yield(
    tmp_path: Path,
) -> None:
    """Fresh connections have equal total_changes(): equal seq stamps must not hide a write."""
    db = make(tmp_path / "a.db")
    db.conn.execute("INSERT INTO t VALUES (1, 'v0')")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT x FROM t") as live:
            assert await live.__anext__() == [("v0",)]
            for i in range(1, 6):
                c = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
                c.execute("UPDATE t SET x = ? WHERE id = 1", (f"v{i}",))
                c.close()
                assert await live.__anext__() == [(f"v{i}",)]


async def test_slow_reader_gets_the_latest_result_once_not_a_backlog(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT max(id) FROM t") as live:
            assert await live.__anext__() == [(None,)]
            assert live.engine is not None
            for i in range(1, 201):
                db.conn.execute("INSERT INTO t VALUES (?, 'x')", (i,))
            looks = live.engine.looks
            db.conn.execute("INSERT INTO u VALUES (1, 'marker')")  # a look after the burst
            await until_engine_looked(live, looks)
            assert await live.__anext__() == [(200,)]
            assert live.runs < 100  # coalesced
            await nothing_within(live, 0.5)


async def test_cancelled_read_loses_nothing(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT count(*) FROM t") as live:
            assert await live.__anext__() == [(0,)]
            with anyio.move_on_after(0.05):
                await live.__anext__()
            db.conn.execute("INSERT INTO t VALUES (1, 'a')")
            assert await live.__anext__() == [(1,)]


async def test_untracked_table_query_reruns_and_yields_only_changed_results(
    tmp_path: Path,
) -> None:
    db = make(tmp_path / "a.db")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT v FROM plain WHERE k = 'a'") as live:
            assert await live.__anext__() == []
            db.conn.execute("INSERT INTO plain VALUES ('a', '1')")
            assert await live.__anext__() == [("1",)]
            looks = live.engine.looks if live.engine else 0
            db.conn.execute("INSERT INTO plain VALUES ('b', '2')")  # same result for 'a'
            await until_engine_looked(live, looks)
            assert live.runs == 3
            db.conn.execute("UPDATE plain SET v = '3' WHERE k = 'a'")
            assert await live.__anext__() == [("3",)]


async def test_views_and_subqueries_report_their_underlying_tables(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    db.conn.execute("CREATE VIEW tv AS SELECT t.id, u.y FROM t JOIN u USING (id)")
    with anyio.fail_after(LIMIT):
        async with db.watch("SELECT * FROM tv") as live:
            assert await live.__anext__() == []
            assert live.tables == {"t", "u", "tv"}
            db.conn.execute("INSERT INTO t VALUES (1, 'a')")
            db.conn.execute("INSERT INTO u VALUES (1, 'b')")
            while (await live.__anext__()) != [(1, "b")]:
                pass


async def test_on_change_callback_reports_table_pk_and_origin(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    got: list[RowChange] = []
    arrived = anyio.Event()

    def cb(changes: list[RowChange]) -> None:
        got.extend(changes)
        arrived.set()

    with anyio.fail_after(LIMIT):
        handle = await db.on_change("t", cb)
        db.conn.execute("INSERT INTO u VALUES (5, 'ignored')")
        db.conn.execute("INSERT INTO t VALUES (5, 'seen')")
        await arrived.wait()
        handle.close()
    assert [(c.table, c.pk, c.local, c.columns) for c in got] == [
        ("t", (5,), True, frozenset({"x"}))
    ]


async def test_watch_refuses_writes_bad_sql_and_memory_databases(tmp_path: Path) -> None:
    db = make(tmp_path / "a.db")
    with anyio.fail_after(LIMIT):
        with pytest.raises(crsync.CrsyncError, match="only read"):
            await db.watch("DELETE FROM t").__anext__()
        with pytest.raises(crsync.CrsyncError, match="invalid live query"):
            await db.watch("SELECT nope FROM t").__anext__()
        with pytest.raises(crsync.CrsyncError, match="in memory"):
            await crsync.connect(":memory:").watch("SELECT 1").__anext__()
    assert db.conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_watch_works_in_consecutive_runs_of_either_event_loop(tmp_path: Path) -> None:
    """One engine per file and process, whichever loops its subscribers run on: a run that
    ended leaves nothing behind that the next one trips on."""
    db = make(tmp_path / "a.db")

    async def once(v: str) -> None:
        with anyio.fail_after(LIMIT):
            async with db.watch("SELECT x FROM t WHERE id = 1") as live:
                await live.__anext__()
                db.conn.execute("INSERT OR REPLACE INTO t VALUES (1, ?)", (v,))
                assert await live.__anext__() == [(v,)]

    anyio.run(once, "a", backend="trio")
    anyio.run(once, "b", backend="asyncio")
    anyio.run(once, "c", backend="trio")


def test_watch_used_without_async_with_ends_when_dropped(tmp_path: Path) -> None:
    from crsync import live as live_module

    db = make(tmp_path / "a.db")

    async def main() -> None:
        with anyio.fail_after(LIMIT):
            async for rows in db.watch("SELECT count(*) FROM t"):
                if rows == [(0,)]:
                    db.conn.execute("INSERT INTO t VALUES (1, 'a')")
                else:
                    assert rows == [(1,)]
                    break

    key = str((tmp_path / "a.db").resolve())
    for backend in ("asyncio", "trio"):
        db.conn.execute("DELETE FROM t")
        anyio.run(main, backend=backend)
        # The dropped query left the engine, which stopped (at its next look at the latest).
        deadline = time.monotonic() + LIMIT
        while key in live_module._ENGINES and time.monotonic() < deadline:
            time.sleep(0.01)  # polls the engine thread's own decision (bounded)
        assert key not in live_module._ENGINES, f"the dropped query kept its engine ({backend})"


def test_subscribers_on_an_asyncio_loop_and_a_trio_loop_share_one_engine(tmp_path: Path) -> None:
    """Two event loops in two threads watch one file: one engine (one connection, one look per
    change) hands each its results in its own loop."""
    from crsync import live as live_module

    db = make(tmp_path / "a.db")
    path = tmp_path / "a.db"
    ready = threading.Barrier(3)
    seen: dict[str, list[object]] = {}
    engines: list[object] = []
    failed: list[BaseException] = []

    async def watcher(name: str) -> None:
        with anyio.fail_after(3 * LIMIT):
            async with crsync.connect(path).watch("SELECT x FROM t") as live:
                assert await live.__anext__() == []
                engines.append(live.engine)
                await anyio.to_thread.run_sync(ready.wait, 3 * LIMIT)
                seen[name] = await live.__anext__()

    def run(backend: str) -> None:
        try:
            anyio.run(watcher, backend, backend=backend)
        except BaseException as exc:  # reported below, with the thread's own traceback
            failed.append(exc)
            ready.abort()

    threads = [threading.Thread(target=run, args=(b,)) for b in ("asyncio", "trio")]
    for t in threads:
        t.start()
    try:
        ready.wait(3 * LIMIT)
    except threading.BrokenBarrierError:
        pass
    if not failed:
        assert str(path.resolve()) in live_module._ENGINES
        db.conn.execute("INSERT INTO t VALUES (1, 'both')")
    for t in threads:
        t.join(3 * LIMIT)
    if failed:
        raise failed[0]
    assert seen == {"asyncio": [("both",)], "trio": [("both",)]}
    assert engines[0] is engines[1]
