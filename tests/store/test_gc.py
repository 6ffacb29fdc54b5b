"""Collected tombstones, the horizon and departed devices, on both backends
(docs/concepts.md, "Tombstones and the horizon")."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
from crsync_relay.store_rules import DAY, DEFAULT_MAX_OFFLINE, Collected
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crsync import Change, CrsyncError, pack_pk
from crsync.change import COLLECTED_SITE

from .helpers import SCHEMA, A, B, C, cell, row, sentinel

T0 = 1_800_000_000.0


class FakeClock:
    """A clock tests move by hand (no sleeping)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def gc_store(make_store: Any, clock: FakeClock) -> Any:
    s = make_store("gc", clock=clock)
    assert s.check_schema(dict(SCHEMA)) is None
    return s


def grave(key: object, cl: int) -> Change:
    """What a reader receives for a collected tombstone of ``key``."""
    return Change("todos", pack_pk([key]), "-1", None, cl, 0, COLLECTED_SITE, cl, 0)


def everything(store: Any, cursor: int = 0) -> list[Change]:
    """Every change a reader at ``cursor`` receives, page by page, in order."""
    out: list[Change] = []
    while True:
        page = store.read_page(cursor, None, max_cells=10**6)
        out += page.changes
        cursor = page.upto
        if page.complete:
            return out


def deleted_row_collected(store: Any) -> None:
    """Rows "a" and "b" inserted (v1), "a" deleted (v2), "b" edited (v3); A received all."""
    store.merge_push(A, 1, [cell("a", "title", "x"), cell("b", "title", "y")])
    store.merge_push(A, 2, [sentinel("a", 2)])
    store.merge_push(A, 3, [cell("b", "title", "z", 2)])
    store.record_received(A, 3)


def test_collect_turns_tombstones_below_the_horizon_into_graves(gc_store: Any) -> None:
    deleted_row_collected(gc_store)
    before = gc_store.gc_stats()
    assert (before.tombstones, before.graves, before.horizon) == (1, 0, 0)
    done = gc_store.collect()
    assert done == Collected(horizon=3, collected=1, departed=0)
    after = gc_store.gc_stats()
    assert (after.tombstones, after.graves, after.horizon) == (0, 1, 3)
    # The row reads as the tombstone did: deleted, causal length 2.
    assert row(gc_store, "a") == {"-1": (None, 2, 2)}
    assert gc_store.stats()["graves"] == 1
    assert gc_store.collect() == Collected(3, 0, 0)  # nothing more to do


def test_graves_are_served_in_version_order_as_collected_tombstones(gc_store: Any) -> None:
    deleted_row_collected(gc_store)
    gc_store.collect()
    changes = everything(gc_store)
    # The grave sits where its delete was (version 2), before version 3's edit of "b".
    assert changes[0] == grave("a", 2)
    assert changes[1][:4] == ("todos", pack_pk(["b"]), "title", "z")
    assert changes[1].db_version == 3
    assert len(changes) == 2
    # A reader past the delete gets only what came after it; one before gets the grave.
    assert grave("a", 2) not in everything(gc_store, 2)
    assert everything(gc_store, 1)[0] == grave("a", 2)
    # Nobody's own cells hide a grave (A pushed the delete).
    page = gc_store.read_page(1, A, max_cells=100)
    assert page.changes == [grave("a", 2)]
    assert gc_store.changes_since(1, A, 1) == ([grave("a", 2)], 2, False)


def test_a_stale_change_pushed_after_collection_loses(gc_store: Any) -> None:
    deleted_row_collected(gc_store)
    gc_store.collect()
    head = gc_store.head
    # B was offline when "a" was deleted: its edit of the old incarnation loses.
    assert gc_store.merge_push(B, 1, [cell("a", "title", "late", 99, site=B)]) == (head, 0)
    assert gc_store.merge_push(B, 2, [sentinel("a", 1, site=B)]) == (head, 0)
    # The same delete again, or the collected tombstone pushed back by a device: nothing.
    assert gc_store.merge_push(B, 3, [sentinel("a", 2, site=B)]) == (head, 0)
    assert row(gc_store, "a") == {"-1": (None, 2, 2)}
    assert gc_store.gc_stats().graves == 1


def test_a_reused_key_with_a_higher_causal_length_wins_and_replaces_the_grave(
    gc_store: Any,
) -> None:
    deleted_row_collected(gc_store)
    gc_store.collect()
    head, wins = gc_store.merge_push(
        B, 1, [sentinel("a", 3, site=B), cell("a", "title", "again", 1, cl=3, site=B)]
    )
    assert (head, wins) == (4, 2)
    assert row(gc_store, "a") == {"-1": (None, 3, 3), "title": ("again", 1, 3)}
    assert gc_store.gc_stats().graves == 0
    # A reader from before the delete gets the live row, not the grave.
    assert all(c.site_id != COLLECTED_SITE for c in everything(gc_store, 1))
    # A higher delete replaces a grave with a tombstone again.
    gc_store.merge_push(C, 1, [sentinel("a", 4, site=C)])
    assert row(gc_store, "a") == {"-1": (None, 4, 4)}


def test_a_delete_of_a_higher_causal_length_replaces_a_grave(gc_store: Any) -> None:
    deleted_row_collected(gc_store)
    gc_store.collect()
    assert gc_store.merge_push(B, 1, [sentinel("a", 4, site=B)])[1] == 1
    assert row(gc_store, "a") == {"-1": (None, 4, 4)}
    assert gc_store.gc_stats().graves == 0
    assert gc_store.gc_stats().tombstones == 1


def test_catch_up_from_an_old_cursor_gets_the_graves(gc_store: Any) -> None:
    gc_store.merge_push(A, 1, [cell(k, "title", k) for k in "abcdef"])
    gc_store.merge_push(A, 2, [sentinel(k, 2) for k in "bdf"])
    gc_store.merge_push(A, 3, [cell("a", "title", "A", 2)])
    gc_store.record_received(A, 3)
    gc_store.collect()
    assert gc_store.gc_stats().graves == 3
    # A device that was at version 1 learns every delete, and only what changed after 1.
    got = everything(gc_store, 1)
    assert sorted(c for c in got if c.site_id == COLLECTED_SITE) == sorted(
        grave(k, 2) for k in "bdf"
    )
    assert [c[:4] for c in got if c.site_id != COLLECTED_SITE] == [
        ("todos", pack_pk(["a"]), "title", "A")
    ]
    assert gc_store.remaining(1) == 4
    assert gc_store.remaining(0) == len(everything(gc_store, 0)) == 3 + 3
    assert gc_store.remaining(3) == 0
    assert gc_store.next_version(0) == 1
    assert gc_store.next_version(1) == 2
    assert gc_store.next_version(3) is None


def test_the_horizon_is_the_lowest_position_of_devices_seen_within_max_offline(
    gc_store: Any, clock: FakeClock
) -> None:
    gc_store.merge_push(A, 1, [cell("a", "title", "x")])  # v1
    gc_store.merge_push(A, 2, [sentinel("a", 2)])  # v2
    gc_store.merge_push(A, 3, [cell("b", "title", "y")])  # v3
    gc_store.record_received(A, 3)
    gc_store.record_received(B, 1)
    assert gc_store.collect().horizon == 1
    assert gc_store.gc_stats().tombstones == 1  # v2 is above the horizon: kept whole
    # B is seen again, further on: the horizon follows it.
    clock.advance(DAY)
    gc_store.record_received(B, 2)
    assert gc_store.collect() == Collected(2, 1, 0)
    # The reactor's site never holds the horizon back.
    site, _ = gc_store.reactor_state()
    gc_store.merge_push(site, 1, [cell("r", "title", "reactor", site=site)])  # v4
    gc_store.record_received(A, 4)
    gc_store.record_received(B, 4)
    assert gc_store.collect().horizon == 4
    assert site not in [d.site_id for d in gc_store.gc_stats().devices]


def test_the_horizon_never_moves_back(gc_store: Any, clock: FakeClock) -> None:
    for v in range(1, 6):
        gc_store.merge_push(A, v, [cell(str(v), "title", "x")])
    gc_store.record_received(A, 5)
    assert gc_store.collect().horizon == 5
    # A new device (or a returning one) at 0 does not pull the horizon back.
    gc_store.record_received(B, 1)
    gc_store.seen(C)
    assert gc_store.collect().horizon == 5
    assert gc_store.horizon() == 5
    gc_store.merge_push(A, 6, [cell("6", "title", "x")])
    gc_store.record_received(A, 6)
    assert gc_store.collect().horizon == 5  # B and C hold it where it is
    gc_store.record_received(B, 6)
    gc_store.record_received(C, 6)
    assert gc_store.collect().horizon == 6


def test_with_no_device_seen_within_max_offline_the_horizon_is_the_head(
    gc_store: Any, clock: FakeClock
) -> None:
    gc_store.merge_push(A, 1, [cell("a", "title", "x")])
    gc_store.merge_push(A, 2, [sentinel("a", 2)])
    # A pushed (seen now) but never said what it merged: received 0 holds the horizon at 0.
    assert gc_store.collect() == Collected(0, 0, 0)
    clock.advance(DEFAULT_MAX_OFFLINE + 1)
    assert gc_store.collect() == Collected(2, 1, 1)


def test_departed_devices_leave_the_horizon_and_keep_only_their_site_binding(
    gc_store: Any, clock: FakeClock
) -> None:
    assert gc_store.bind_site(B, b"b's key 0123456789") is None
    gc_store.merge_push(B, 7, [cell("b", "title", "from b", site=B)])  # v1
    gc_store.record_received(B, 1)
    gc_store.merge_push(A, 1, [cell("a", "title", "x")])  # v2
    gc_store.merge_push(A, 2, [sentinel("a", 2)])  # v3
    gc_store.record_received(A, 3)
    assert gc_store.collect().horizon == 1
    # B stays away longer than max_offline while A keeps syncing.
    clock.advance(DEFAULT_MAX_OFFLINE + DAY)
    gc_store.seen(A)
    done = gc_store.collect()
    assert done == Collected(horizon=3, collected=1, departed=1)
    info = {d.site_id: d for d in gc_store.gc_stats().devices}
    assert info[B].departed and (info[B].pushed_upto, info[B].received_upto) == (0, 0)
    assert not info[A].departed
    assert gc_store.peer(B).pushed_upto == gc_store.peer(B).received_upto == 0
    # Its binding holds: nobody else may speak for B.
    assert gc_store.bind_site(B, b"someone else's key") is not None
    assert gc_store.bind_site(B, b"b's key 0123456789") is None
    # B returns: re-admitted by catch-up from its own cursor (1): it learns the delete.
    assert everything(gc_store, 1)[-1] == grave("a", 2)
    gc_store.seen(B)
    assert not {d.site_id: d for d in gc_store.devices()}[B].departed
    gc_store.record_received(B, 3)
    assert gc_store.peer(B).received_upto == 3
    assert gc_store.collect().departed == 0


def test_a_connected_device_counts_as_seen_now(gc_store: Any, clock: FakeClock) -> None:
    gc_store.merge_push(A, 1, [cell("a", "title", "x")])
    gc_store.record_received(B, 1)
    clock.advance(DEFAULT_MAX_OFFLINE + DAY)
    assert gc_store.collect(connected=[B]).departed == 1  # A only
    departed = {d.site_id: d.departed for d in gc_store.devices()}
    assert departed == {A: True, B: False}
    assert gc_store.collect().departed == 1  # B, now that it is not connected


def test_max_offline_is_kept_per_store(make_store: Any, clock: FakeClock) -> None:
    s = make_store("mo", clock=clock, default_max_offline=30 * DAY)
    assert s.max_offline() == 30 * DAY
    s.set_max_offline(2 * DAY)
    assert make_store("mo", clock=clock).max_offline() == 2 * DAY
    assert make_store("other", clock=clock).max_offline() == DEFAULT_MAX_OFFLINE
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(CrsyncError, match="positive"):
            s.set_max_offline(bad)
    # The setting decides who departs.
    s.merge_push(A, 1, [cell("a", "title", "x")])
    clock.advance(3 * DAY)
    assert s.collect().departed == 1


def test_gc_stats_report_the_horizon_age_and_devices_about_to_depart(
    gc_store: Any, clock: FakeClock
) -> None:
    gc_store.merge_push(A, 1, [cell("a", "title", "x")])
    gc_store.record_received(A, 1)
    gc_store.seen(B)  # B at 0 holds the horizon back from now on
    clock.advance(DEFAULT_MAX_OFFLINE - 3 * DAY)
    gc_store.seen(A)
    st = gc_store.gc_stats()
    assert st.horizon_age == pytest.approx(DEFAULT_MAX_OFFLINE - 3 * DAY)
    assert st.about_to_depart == 1  # B: within 7 days of max_offline
    assert st.max_offline == DEFAULT_MAX_OFFLINE
    assert sorted(d.site_id for d in st.devices) == [A, B]
    clock.advance(4 * DAY)
    gc_store.collect()
    st = gc_store.gc_stats()
    assert (st.horizon_age, st.about_to_depart) == (0.0, 0)
    assert [d.departed for d in st.devices if d.site_id == B] == [True]


def test_a_version_read_in_parts_includes_its_graves_in_key_order(gc_store: Any) -> None:
    keys = [f"k{i:03}" for i in range(60)]
    gc_store.merge_push(A, 1, [cell(k, "title", "v" * 50) for k in keys])  # v1
    # One version deleting half the rows and editing the other half: read in parts later.
    unit = [sentinel(k, 2) if i % 2 else cell(k, "title", "w" * 50, 2) for i, k in enumerate(keys)]
    gc_store.merge_push(A, 2, unit)  # v2
    gc_store.record_received(A, 2)
    gc_store.collect()
    assert gc_store.gc_stats().graves == 30
    got: list[Change] = []
    page = gc_store.read_page(1, None, max_cells=7)
    parts = 1
    while page.resume is not None:
        got += page.changes
        page = gc_store.read_page(1, None, max_cells=7, after=page.resume)
        parts += 1
    got += page.changes
    assert parts > 2 and page.upto == 2 and page.complete
    assert [c.pk for c in got] == [pack_pk([k]) for k in keys]
    assert [c.site_id == COLLECTED_SITE for c in got] == [bool(i % 2) for i in range(60)]
    # What a peer holding the first part has left.
    first = gc_store.read_page(1, None, max_cells=7)
    assert first.resume is not None
    assert gc_store.remaining(1, first.resume) == 60 - len(first.changes)


def test_repairs_remove_graves_too(gc_store: Any) -> None:
    deleted_row_collected(gc_store)
    gc_store.collect()
    assert gc_store.remove_cells("todos", pack_pk(["a"]), "title") == 0
    assert gc_store.remove_cells("todos", pack_pk(["a"]), None) == 1
    assert row(gc_store, "a") == {}
    gc_store.merge_push(A, 4, [cell("c", "title", "x")])
    gc_store.merge_push(A, 5, [sentinel("c", 2)])
    gc_store.record_received(A, gc_store.head)
    gc_store.collect()
    assert gc_store.gc_stats().graves == 1
    assert gc_store.forget_table("todos") == 2  # the grave of "c" and the cell of "b"
    assert gc_store.gc_stats().graves == 0


def test_a_store_that_collects_merges_exactly_as_one_that_never_does(make_store: Any) -> None:
    """Random pushes (deletes, reused keys, stale edits from devices that were away), with
    collections at random moments: every row reads the same as in a store that keeps every
    tombstone, and every catch-up (from any cursor) leads to the same rows."""
    rng = random.Random(14)
    clock = FakeClock()
    kept = make_store("kept", clock=clock)
    gc = make_store("gc", clock=clock)
    for s in (kept, gc):
        assert s.check_schema(dict(SCHEMA)) is None
    sites = [A, B, C]
    cls: dict[str, int] = {}
    for step in range(120):
        site = rng.choice(sites)
        unit: list[Change] = []
        for _ in range(rng.randint(1, 4)):
            k = rng.choice("abcdefgh")
            cl = cls.get(k, 1)
            op = rng.random()
            if op < 0.3:  # delete (maybe a stale one)
                cl2 = cl + 1 if cl % 2 else cl
                unit.append(sentinel(k, cl2 - (2 if rng.random() < 0.2 and cl2 > 2 else 0)))
                cls[k] = max(cls.get(k, 0), cl2)
            elif op < 0.5:  # re-insert a deleted key
                cl2 = cl + 1 if cl % 2 == 0 else cl
                unit.append(sentinel(k, cl2, site=site))
                unit.append(cell(k, "title", f"{step}", 1, cl=cl2, site=site))
                cls[k] = max(cls.get(k, 0), cl2)
            else:  # an edit, of the current or (stale) an older incarnation
                use = cl if cl % 2 else max(1, cl - 1 - 2 * rng.randint(0, 1))
                unit.append(cell(k, "title", f"e{step}", rng.randint(1, 5), cl=use, site=site))
        unit = [u._replace(site_id=site) for u in unit]
        for s in (kept, gc):
            s.merge_push(site, step + 1, unit)
        if rng.random() < 0.3:
            gc.record_received(rng.choice(sites), rng.randint(0, gc.head))
        if rng.random() < 0.2:
            clock.advance(rng.choice([DAY, 100 * DAY]))
            gc.collect()
    gc.record_received(A, gc.head)
    gc.record_received(B, gc.head)
    gc.record_received(C, gc.head)
    gc.collect()
    assert gc.gc_stats().tombstones == 0
    assert gc.gc_stats().graves > 0
    for k in "abcdefgh":
        assert row(gc, k) == row(kept, k), k
    # Catch-up from any cursor: replaying it onto what the reader had gives the same rows.
    for cursor in (0, 5, gc.head // 2, gc.head - 1):
        mine = {(c.pk, c.cid) for c in everything(gc, cursor)}
        theirs = {(c.pk, c.cid) for c in everything(kept, cursor)}
        assert mine == theirs


# ---------------------------------------------------------------------------- layouts


def test_an_old_store_file_without_graves_opens_and_gains_them(tmp_path: Any) -> None:
    import sqlite3

    from crsync_relay.store import RelayStore

    path = tmp_path / "old.store.sqlite3"
    s = RelayStore(path)
    s.merge_push(A, 1, [cell("a", "title", "x")])
    s.merge_push(A, 2, [sentinel("a", 2)])
    s.record_received(A, 2)
    s.close()
    # The file as the previous release wrote it: no graves, no departed column.
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE relay_graves")
    conn.execute("ALTER TABLE relay_peers DROP COLUMN departed")
    conn.commit()
    conn.close()
    s = RelayStore(path, create=False)
    assert s.collect() == Collected(2, 1, 0)
    assert row(s, "a") == {"-1": (None, 2, 2)}
    assert [d.departed for d in s.devices()] == [False]
    s.close()


def test_an_older_postgresql_layout_is_upgraded_in_place(pg_server: Any) -> None:
    import uuid

    from crsync_relay.pg_store import LAYOUT_VERSION, PgDatabase

    conninfo = pg_server.create_database(f"upgrade_{uuid.uuid4().hex[:8]}")
    with PgDatabase(conninfo, max_size=2) as db:
        s = db.open_store("old")
        s.merge_push(A, 1, [cell("a", "title", "x")])
        s.merge_push(A, 2, [sentinel("a", 2)])
        s.record_received(A, 2)
        with db.pool.connection() as conn:  # layout 1: no graves, no departed column
            conn.execute("DROP TABLE crsync_relay.graves")
            conn.execute("ALTER TABLE crsync_relay.peers DROP COLUMN departed")
            conn.execute("UPDATE crsync_relay.layout SET version = 1")
    with PgDatabase(conninfo, max_size=2, create=False) as db:
        with db.pool.connection() as conn:
            row_ = conn.execute("SELECT version FROM crsync_relay.layout").fetchone()
        assert row_ is not None and row_[0] == LAYOUT_VERSION == 2
        s = db.open_store("old", create=False)
        assert s.collect() == Collected(2, 1, 0)
        assert row(s, "a") == {"-1": (None, 2, 2)}


def test_the_quota_figure_counts_a_grave_as_the_tombstone_it_was(pg_database: Any) -> None:
    import uuid

    from crsync_relay.pg_store import CELL_OVERHEAD

    s = pg_database.open_store(f"qg-{uuid.uuid4().hex[:8]}")

    def recomputed() -> int:
        with pg_database.pool.connection() as conn:
            row_ = conn.execute(
                "SELECT (SELECT coalesce(sum(%(o)s + octet_length(tbl) + octet_length(pk) + "
                "octet_length(cid) + coalesce(octet_length(data), 0)), 0) FROM "
                "crsync_relay.cells WHERE store_id = %(s)s) + (SELECT coalesce(sum(%(o)s + 2 + "
                "octet_length(tbl) + octet_length(pk)), 0) FROM crsync_relay.graves "
                "WHERE store_id = %(s)s)",
                {"o": CELL_OVERHEAD, "s": s.store_id},
            ).fetchone()
        return int(row_[0])

    s.merge_push(A, 1, [cell(str(i), "title", "x" * i) for i in range(20)])
    s.merge_push(A, 2, [sentinel(str(i), 2) for i in range(10)])
    s.record_received(A, 2)
    before = s.data_bytes()
    assert s.collect().collected == 10
    assert s.data_bytes() == recomputed() == before
    s.merge_push(B, 1, [sentinel("3", 3, site=B), cell("3", "title", "back", cl=3, site=B)])
    assert s.data_bytes() == recomputed()
    s.remove_cells("todos", pack_pk(["4"]), None)
    assert s.data_bytes() == recomputed()
    s.forget_table("todos")
    assert s.data_bytes() == recomputed() == 0


def test_export_and_import_carry_graves_and_departed_devices(
    pg_database: Any, tmp_path: Any
) -> None:
    import uuid

    from crsync_relay.store import RelayStore

    clock = FakeClock()
    src = RelayStore(tmp_path / "src.store.sqlite3", clock=clock)
    src.merge_push(B, 1, [cell("b", "title", "y", site=B)])
    src.record_received(B, 1)
    src.merge_push(A, 1, [cell("a", "title", "x")])
    src.merge_push(A, 2, [sentinel("a", 2)])
    clock.advance(DEFAULT_MAX_OFFLINE + DAY)
    src.record_received(A, 3)
    src.set_max_offline(90 * DAY)
    assert src.collect() == Collected(3, 1, 1)
    want = (everything(src), src.gc_stats(), src.horizon(), src.max_offline())
    src.close()
    sid = f"gi-{uuid.uuid4().hex[:8]}"
    pg_database.import_store(sid, tmp_path / "src.store.sqlite3")
    pg = pg_database.open_store(sid, clock=clock)
    assert (everything(pg), pg.gc_stats(), pg.horizon(), pg.max_offline()) == want
    pg_database.export_store(sid, tmp_path / "back.store.sqlite3")
    back = RelayStore(tmp_path / "back.store.sqlite3", create=False, clock=clock)
    assert (everything(back), back.gc_stats(), back.horizon(), back.max_offline()) == want
    back.close()


def test_backup_and_restore_keep_graves_horizon_and_departed_devices(tmp_path: Any) -> None:
    from crsync_relay.backup import backup_store, restore_store
    from crsync_relay.datadir import DataDir
    from crsync_relay.store import RelayStore

    clock = FakeClock()
    layout = DataDir(tmp_path / "relay")
    layout.create()
    s = RelayStore(layout.store_path("s"), clock=clock)
    s.merge_push(B, 1, [cell("b", "title", "y", site=B)])
    s.record_received(B, 1)
    s.merge_push(A, 1, [cell("a", "title", "x")])
    s.merge_push(A, 2, [sentinel("a", 2)])
    clock.advance(DEFAULT_MAX_OFFLINE + DAY)
    s.record_received(A, 3)
    assert s.collect() == Collected(3, 1, 1)
    want = (everything(s), s.gc_stats(), s.horizon())
    s.close()
    backup_store(tmp_path / "relay", "s", tmp_path / "s.bak")
    restore_store(tmp_path / "relay", "t", tmp_path / "s.bak")
    t = RelayStore(layout.store_path("t"), create=False, clock=clock)
    assert (everything(t), t.gc_stats(), t.horizon()) == want
    t.close()


_OPS = st.lists(
    st.one_of(
        # a pushed change: (site, key, kind, causal length, col_version)
        st.tuples(
            st.just("push"),
            st.integers(0, 2),
            st.sampled_from("abcd"),
            st.sampled_from(["cell", "sentinel"]),
            st.integers(1, 7),
            st.integers(1, 4),
        ),
        st.tuples(st.just("received"), st.integers(0, 2), st.integers(0, 40)),
        st.tuples(st.just("collect"), st.sampled_from([0.0, DAY, 200 * DAY])),
    ),
    max_size=40,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=_OPS)
def test_collecting_at_any_moment_never_changes_a_merge_or_a_catch_up(
    make_store: Any, ops: list[tuple[Any, ...]]
) -> None:
    """Any schedule of pushes (deletes, re-inserts, stale writes of any causal length),
    positions, absences and collections: every push merges with the same outcome as in a store
    that keeps every tombstone, rows read the same, and a reader at any cursor gets the same
    keys."""
    clock = FakeClock()
    name = uuid.uuid4().hex[:8]
    kept = make_store(f"k{name}", clock=clock)
    gc = make_store(f"g{name}", clock=clock)
    sites = [A, B, C]
    pushed = [0, 0, 0]
    for op in ops:
        if op[0] == "push":
            _, i, key, kind, cl, cv = op
            site = sites[i]
            odd = cl if cl % 2 else cl - 1
            change = (
                sentinel(key, cl, site=site)
                if kind == "sentinel"
                else cell(key, "title", f"{key}{cv}{cl}", cv, cl=odd, site=site)
            )
            pushed[i] += 1
            assert kept.merge_push(site, pushed[i], [change]) == gc.merge_push(
                site, pushed[i], [change]
            )
        elif op[0] == "received":
            gc.record_received(sites[op[1]], min(op[2], gc.head))
        else:
            clock.advance(op[1])
            done = gc.collect()
            assert done.horizon <= gc.head
            assert gc.horizon() == done.horizon
    for key in "abcd":
        assert row(gc, key) == row(kept, key)
    for cursor in range(gc.head + 1):
        mine = [(c.pk, c.cid, c.cl) for c in everything(gc, cursor)]
        theirs = [(c.pk, c.cid, c.cl) for c in everything(kept, cursor)]
        assert sorted(mine) == sorted(theirs)
        assert gc.remaining(cursor) == kept.remaining(cursor) == len(theirs)
