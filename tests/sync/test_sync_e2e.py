"""End to end: a real relay process, real sockets on 127.0.0.1, real peers."""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
import trustme
from crsync_relay.store import RelayStore

import crsync
from crsync import AuthError, ProtocolError, SchemaMismatchError
from crsync.peer import Peer, PeerState

from .conftest import RelayFactory, RelayProcess
from .helpers import (
    FAST,
    TODOS,
    assert_resumes_without_resending,
    converge,
    eventually,
    open_db,
    peers_at,
    rows,
    snapshot,
)

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

@contextlib.asynccontextmanager
async def peers(
    relay: RelayProcess, store: str, *dbs: crsync.Database, **kw: object
) -> AsyncIterator[list[Peer]]:
    """Run one Peer per database on a store (with a token when the relay needs one)."""
    token = relay.token(store) if relay.secret is not None else None
    url = str(kw.pop("url", relay.url))
    async with peers_at(url, store, *dbs, token=token, **kw) as out:
        yield out


def assert_same(*dbs: crsync.Database) -> None:
    first = snapshot(dbs[0])
    for db in dbs[1:]:
        assert snapshot(db) == first


# ---------------------------------------------------------------------------- convergence


async def test_two_peers_converge(relay: RelayProcess, tmp_path: Path) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'milk')")
    b.conn.execute("INSERT INTO todos (id, title, data) VALUES ('2', 'eggs', x'00ff')")
    with anyio.fail_after(20):
        async with peers(relay, "s1", a, b) as ps:
            await converge(ps)
            assert rows(b) == [("1", "milk", 0, None), ("2", "eggs", 0, b"\x00\xff")]
            b.conn.execute("UPDATE todos SET done = 1 WHERE id = '1'")
            a.conn.execute("DELETE FROM todos WHERE id = '2'")
            await converge(ps)
            assert ps[0].state is PeerState.SYNCED
    assert rows(a) == rows(b) == [("1", "milk", 1, None)]


async def test_five_peers_with_concurrent_edits_converge(
    relay: RelayProcess, tmp_path: Path
) -> None:
    dbs = [open_db(tmp_path / f"d{i}.db") for i in range(5)]

    async def edit(i: int, db: crsync.Database) -> None:
        rnd = random.Random(i)
        for n in range(20):
            k = str(rnd.randrange(8))
            if rnd.random() < 0.2:
                db.conn.execute("DELETE FROM todos WHERE id = ?", (k,))
            else:
                db.conn.execute(
                    "INSERT INTO todos (id, title) VALUES (?, ?) "
                    "ON CONFLICT (id) DO UPDATE SET title = excluded.title, done = done + 1",
                    (k, f"d{i}-{n}"),
                )
            db.conn.execute("INSERT INTO notes VALUES (?, ?, 'x')", (i, str(n)))
            await anyio.lowlevel.checkpoint()

    with anyio.fail_after(30):
        async with peers(relay, "five", *dbs) as ps:
            async with anyio.create_task_group() as nursery:
                for i, db in enumerate(dbs):
                    nursery.start_soon(edit, i, db)
            await converge(ps)
    assert_same(*dbs)
    assert len(rows(dbs[0], "notes")) == 100


async def test_stores_are_isolated(relay: RelayProcess, tmp_path: Path) -> None:
    names = ["A", "B", "C"]
    dbs = {s: [open_db(tmp_path / f"{s}{i}.db") for i in range(2)] for s in names}
    for s in names:
        dbs[s][0].conn.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"{s}-row", s))
    with anyio.fail_after(20):
        async with (
            peers(relay, "A", *dbs["A"]) as pa,
            peers(relay, "B", *dbs["B"]) as pb,
            peers(relay, "C", *dbs["C"]) as pc,
        ):
            for ps in (pa, pb, pc):
                await converge(ps)
    for s in names:
        assert_same(*dbs[s])
        assert rows(dbs[s][1]) == [(f"{s}-row", s, 0, None)]
        store = RelayStore(relay.store_path(s), create=False)
        assert {v for (v,) in store.conn.execute("SELECT val FROM relay_cells")} == {s, 0, None}


async def test_offline_edits_on_both_sides_merge_on_reconnect(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'x'), ('2', 'y'), ('3', 'z')")
    with anyio.fail_after(30):
        async with peers(relay, "off", a, b) as ps:
            await converge(ps)
        # both offline: conflicting and independent edits
        a.conn.execute("UPDATE todos SET title = 'from-a' WHERE id = '1'")
        b.conn.execute("UPDATE todos SET title = 'from-b', done = 5 WHERE id = '1'")
        a.conn.execute("DELETE FROM todos WHERE id = '2'")
        b.conn.execute("UPDATE todos SET done = 7 WHERE id = '3'")
        a.conn.execute("INSERT INTO todos (id, title) VALUES ('a', 'new-a')")
        b.conn.execute("INSERT INTO todos (id, title) VALUES ('b', 'new-b')")
        async with peers(relay, "off", a, b) as ps:
            await converge(ps)
    assert_same(a, b)
    got = {r[0]: r for r in rows(a)}
    assert set(got) == {"1", "3", "a", "b"}
    assert got["1"][1] == "from-b" and got["1"][2] == 5  # equal col_version: larger value wins
    assert got["3"][2] == 7


# ---------------------------------------------------------------------------- durability


async def test_relay_killed_mid_push_loses_nothing_acked(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    for t in range(60):  # 60 transactions: many units, each acknowledged on its own
        a.conn.execute("BEGIN")
        a.conn.executemany(
            "INSERT INTO todos (id, title) VALUES (?, ?)",
            [(f"{t}-{i}", "x" * 50) for i in range(500)],
        )
        a.conn.execute("COMMIT")
        a.db_version  # seals: one local version per transaction  # noqa: B018
    target = a.db_version
    with anyio.fail_after(60):
        async with peers(relay, "kill", a, b, batch_cells=1000) as (pa, pb):
            await eventually(lambda: pa.push_upto > 0, "a first acknowledgement")
            relay.kill()
            acked = pa.push_upto
            assert 0 < acked < target, "the relay was not killed mid-push"
            # Everything the relay acknowledged is in its file.
            store = RelayStore(relay.store_path("kill"), create=False)
            on_relay = {
                (t, pk, cid): cv
                for t, pk, cid, cv in store.conn.execute(
                    "SELECT tbl, pk, cid, col_version FROM relay_cells"
                )
            }
            store.close()
            check = crsync.connect(tmp_path / "a.db")
            acked_changes = [c for c in check.changes() if c.db_version <= acked]
            check.close()
            assert acked_changes
            missing = [
                c for c in acked_changes if on_relay.get((c.table, c.pk, c.cid), -1) < c.col_version
            ]
            assert not missing, f"{len(missing)} acknowledged changes lost"
            relay.start()
            await converge([pa, pb])
            assert pa.push_upto >= target
    assert len(rows(b)) == 30_000
    assert_same(a, b)


async def test_deleted_relay_data_is_rebuilt_by_the_devices(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b, c = (open_db(tmp_path / f"{n}.db") for n in "abc")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('a1', 'from a')")
    b.conn.execute("INSERT INTO todos (id, title) VALUES ('b1', 'from b')")
    with anyio.fail_after(40):
        async with peers(relay, "lost", a, b) as (pa, pb):
            await converge([pa, pb])
            old_epoch = pa.epoch
            relay.stop()
            shutil.rmtree(relay.data_dir)
            relay.start()
            a.conn.execute("INSERT INTO todos (id, title) VALUES ('a2', 'while lost')")
            await converge([pa, pb])
            assert pa.epoch == pb.epoch != old_epoch
        async with peers(relay, "lost", c) as (pc,):
            await pc.wait_synced()
    assert_same(a, b, c)
    assert [r[0] for r in rows(c)] == ["a1", "a2", "b1"]


@pytest.mark.slow
async def test_new_device_bootstraps_a_100k_row_store(relay: RelayProcess, tmp_path: Path) -> None:
    a, c = open_db(tmp_path / "a.db"), open_db(tmp_path / "c.db")
    for t in range(20):
        a.conn.execute("BEGIN")
        a.conn.executemany(
            "INSERT INTO todos (id, title, done) VALUES (?, ?, ?)",
            ((f"k{i:06d}", f"title {i}", i % 2) for i in range(t * 5000, (t + 1) * 5000)),
        )
        a.conn.execute("COMMIT")
        a.db_version  # seals: one local version per transaction  # noqa: B018
    with anyio.fail_after(60):
        t0 = time.monotonic()
        async with peers(relay, "big", a) as (pa,):
            await pa.wait_synced()
        push_time = time.monotonic() - t0
        t0 = time.monotonic()
        progress: list[tuple[int, int]] = []
        report = progress.append
        async with peers(relay, "big", c, on_progress=lambda d, t: report((d, t))) as (pc,):
            await pc.wait_synced()
        elapsed = time.monotonic() - t0
    assert c.conn.execute("SELECT count(*), sum(done) FROM todos").fetchone() == (100_000, 50_000)
    assert rows(c)[-1] == ("k099999", "title 99999", 1, None)
    assert len(progress) > 1, "a bootstrap arrives in pages"
    # (done, total) of the catch-up: done only grows and reaches the total.
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert progress[-1][0] == progress[-1][1] > 0
    assert elapsed < 30, f"bootstrap took {elapsed:.1f}s (the first push {push_time:.1f}s)"


# ---------------------------------------------------------------------------- auth


async def test_token_for_one_store_cannot_read_or_write_another(
    relay: RelayProcess, tmp_path: Path
) -> None:
    owner, thief = open_db(tmp_path / "owner.db"), open_db(tmp_path / "thief.db")
    owner.conn.execute("INSERT INTO todos (id, title) VALUES ('secret', 'of B')")
    thief.conn.execute("INSERT INTO todos (id, title) VALUES ('junk', 'from A')")
    with anyio.fail_after(20):
        async with peers(relay, "B", owner) as (po,):
            await po.wait_synced()
        token_a = relay.token("A")
        async with Peer(thief, relay.url, store="B", token=token_a, **FAST) as pt:  # type: ignore[arg-type]
            with pytest.raises(AuthError, match="forbidden"):
                await pt.wait_synced()
            assert pt.state is PeerState.ERROR
            assert isinstance(pt.error, AuthError)
        assert pt.state is PeerState.ERROR
    assert pt.stats.connects == 0
    assert relay.wait_for(r"relay\.refused .*code=forbidden") == 1, "the peer retried"
    assert [r[0] for r in rows(thief)] == ["junk"]
    store = RelayStore(relay.store_path("B"), create=False)
    assert "from A" not in {v for (v,) in store.conn.execute("SELECT val FROM relay_cells")}


async def test_expired_token_is_refused(relay: RelayProcess, tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    token = relay.token("s", ttl=60, now=time.time() - 3600)
    with anyio.fail_after(20):
        async with Peer(db, relay.url, store="s", token=token, **FAST) as peer:  # type: ignore[arg-type]
            with pytest.raises(AuthError, match="token_expired"):
                await peer.wait_state(PeerState.SYNCED)
    assert relay.wait_for(r"code=token_expired") == 1


async def test_missing_or_forged_token_is_refused(relay: RelayProcess, tmp_path: Path) -> None:
    db = open_db(tmp_path / "a.db")
    forged = relay.token("s")[:-4] + "AAAA"
    for token in (None, forged, "not-a-jwt"):
        with anyio.fail_after(20):
            async with Peer(db, relay.url, store="s", token=token, **FAST) as peer:  # type: ignore[arg-type]
                with pytest.raises(AuthError, match="unauthorized"):
                    await peer.wait_synced()
    assert not relay.store_path("s").exists()


@pytest.mark.parametrize(
    "store", ["../x", "/etc/x", "a/b", "..", ".", "", "x" * 200, "ünï", "a\nb"], ids=repr
)
async def test_hostile_store_ids_are_refused(
    relay_factory: RelayFactory, tmp_path: Path, store: str
) -> None:
    relay = relay_factory(dev=True)
    db = open_db(tmp_path / "a.db")
    with anyio.fail_after(20):
        async with Peer(db, relay.url, store=store, **FAST) as peer:  # type: ignore[arg-type]
            with pytest.raises(ProtocolError) as info:
                await peer.wait_synced()
    assert info.value.code == "bad_store"
    assert peer.state is PeerState.ERROR
    assert relay.wait_for("code=bad_store") == 1
    assert not _store_files(tmp_path)


def _store_files(root: Path) -> list[Path]:
    return [f for f in root.rglob("*") if "store.sqlite3" in f.name]


# ---------------------------------------------------------------------------- schema


async def test_schema_mismatch_stops_the_peer_and_merges_nothing(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a = open_db(tmp_path / "a.db")
    b = open_db(
        tmp_path / "b.db",
        "CREATE TABLE todos (id TEXT NOT NULL, owner TEXT NOT NULL, title TEXT, "
        "PRIMARY KEY (id, owner))",
    )
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('a', 'from a')")
    b.conn.execute("INSERT INTO todos VALUES ('b', 'me', 'from b')")
    with anyio.fail_after(20):
        async with peers(relay, "s", a) as (pa,):
            await pa.wait_synced()
        async with peers(relay, "s", b) as (pb,):
            with pytest.raises(SchemaMismatchError, match="'todos'"):
                await pb.wait_synced()
            assert pb.state is PeerState.ERROR
    assert rows(b) == [("b", "me", "from b")]
    store = RelayStore(relay.store_path("s"), create=False)
    assert "from b" not in {v for (v,) in store.conn.execute("SELECT val FROM relay_cells")}
    assert relay.wait_for("code=schema_mismatch") == 1


async def test_additive_schema_difference_syncs(relay: RelayProcess, tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    b = open_db(
        tmp_path / "b.db",
        "CREATE TABLE todos (id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0, "
        "data BLOB, extra TEXT)",
    )
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('a', 'from a')")
    b.conn.execute("INSERT INTO todos (id, title, extra) VALUES ('b', 'from b', 'more')")
    with anyio.fail_after(20):
        async with peers(relay, "s", a, b) as ps:
            await converge(ps)
    assert rows(a) == [("a", "from a", 0, None), ("b", "from b", 0, None)]
    assert rows(b) == [("a", "from a", 0, None, None), ("b", "from b", 0, None, "more")]


# ---------------------------------------------------------------------------- peer behaviour


async def test_wait_synced_on_the_reader_after_the_writer_sees_the_write(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    with anyio.fail_after(30):
        async with peers(relay, "ws", a, b) as (pa, pb):
            for i in range(15):
                a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'x')", (str(i),))
                await pa.wait_synced()
                await pb.wait_synced()
                assert b.conn.execute(
                    "SELECT count(*) FROM todos WHERE id = ?", (str(i),)
                ).fetchone() == (1,), f"write {i} missing on B after wait_synced"


async def test_restarted_peer_resumes_from_its_cursors(relay: RelayProcess, tmp_path: Path) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.executemany("INSERT INTO todos (id) VALUES (?)", [(str(i),) for i in range(200)])
    b.conn.executemany("INSERT INTO notes VALUES (?, 'b', 'x')", [(i,) for i in range(50)])
    with anyio.fail_after(30):
        async with peers(relay, "resume", a, b) as ps:
            await converge(ps)
            assert ps[1].stats.received_changes > 0
        await assert_resumes_without_resending(
            lambda: peers(relay, "resume", a, b),
            lambda: a.conn.execute("UPDATE todos SET title = 'new' WHERE id = '7'"),
        )
    assert_same(a, b)


async def test_writes_from_another_process_are_pushed_without_notify(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    script = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute(\"INSERT INTO todos (id, title) VALUES ('ext', 'other process')\")\n"
    )
    with anyio.fail_after(30):
        async with peers(relay, "ext", a, b) as (pa, pb):
            await converge([pa, pb])
            await anyio.run_process([sys.executable, "-c", script, str(tmp_path / "a.db")])
            await eventually(
                lambda: rows(b) == [("ext", "other process", 0, None)],
                "the other process's write to reach B",
            )
    assert pa.stats.pushed_changes >= 3


async def test_wss_with_a_private_ca(relay_factory: RelayFactory, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    relay = relay_factory("--tls-cert", str(cert_file), "--tls-key", str(key_file))
    assert relay.count("tls=True") == 1
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('tls', 'secure')")
    url = f"wss://localhost:{relay.port}"
    with anyio.fail_after(20):
        async with peers(relay, "tls", a, b, url=url, ssl=ctx) as ps:
            await converge(ps)
        # an untrusted certificate never syncs (it retries: TLS failures may be transient)
        async with peers(relay, "tls", b, url=url, ssl=ssl.create_default_context()) as (pb,):
            await eventually(lambda: pb.stats.last_error is not None, "a TLS failure")
            assert pb.stats.connects == 0
            assert "CERTIFICATE" in pb.stats.last_error.upper()
    assert rows(b) == [("tls", "secure", 0, None)]


def test_sqlite_sanity_of_helpers(tmp_path: Path) -> None:
    db = open_db(tmp_path / "x.db", TODOS)
    assert db.tracked_tables() == ["todos"]
    assert sqlite3.connect(tmp_path / "x.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_relay_restored_from_an_older_copy_is_refilled_by_the_devices(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a, b, c = (open_db(tmp_path / f"{n}.db") for n in "abc")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('old', 'in the backup')")
    backup = tmp_path / "backup"
    with anyio.fail_after(40):
        async with peers(relay, "bk", a, b) as ps:
            await converge(ps)
            relay.stop()
            shutil.copytree(relay.data_dir, backup)
            relay.start()
            for i in range(5):
                a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'after')", (f"n{i}",))
                await converge(ps)
            b.conn.execute("INSERT INTO todos (id, title) VALUES ('b', 'after')")
            await converge(ps)
            relay.stop()
            shutil.rmtree(relay.data_dir)
            shutil.copytree(backup, relay.data_dir)  # same epoch, older head
            relay.start()
            await converge(ps)
            assert all(p.state is PeerState.SYNCED for p in ps)
        async with peers(relay, "bk", c) as (pc,):
            await pc.wait_synced()
    assert_same(a, b, c)
    assert len(rows(c)) == 7
