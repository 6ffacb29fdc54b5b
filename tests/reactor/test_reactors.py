"""Store reactors on the relay: answers reach devices, isolation between stores, restarts."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner
from crsync_relay.cli import main as relay_cli
from crsync_relay.server import RelayConfig

import crsync

from .relay_util import answer_questions, device, peer, relay

LIMIT = 20.0


async def answered(db: crsync.Database, rid: str) -> str:
    """Wait (live query) until request ``rid`` has an answer on this device."""
    async with db.watch("SELECT answer FROM requests WHERE id = ?", (rid,)) as live:
        async for rows in live:
            if rows and rows[0][0] is not None:
                return str(rows[0][0])
    raise AssertionError("watch ended")


def store_meta(data_dir: Path, store: str) -> dict[str, Any]:
    conn = sqlite3.connect(data_dir / f"{store}.store.sqlite3")
    try:
        return dict(conn.execute("SELECT key, value FROM relay_meta").fetchall())
    finally:
        conn.close()


async def test_reactor_answers_a_request_and_both_devices_see_the_answer(tmp_path: Path) -> None:
    a, b = device(tmp_path / "a.db"), device(tmp_path / "b.db")
    with trio.fail_after(LIMIT):
        async with (
            relay(tmp_path / "relay", answer_questions) as (url, _hub),
            peer(a, url, "fresh-store"),
            peer(b, url, "fresh-store"),
        ):
            a.conn.execute("INSERT INTO requests (id, question) VALUES ('r1', 'hello')")
            assert await answered(b, "r1") == "olleh"
            assert await answered(a, "r1") == "olleh"
    # the answer is authored by the relay's own site id for this store
    meta = store_meta(tmp_path / "relay", "fresh-store")
    feed = {c.site_id for c in a.changes() if c.cid == "answer"}
    assert feed == {meta["relay_site"]}
    assert meta["reactor_cursor"] >= 1


async def test_failing_reactor_in_one_store_leaves_other_stores_and_sync_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls: dict[str, int] = {}
    retried = trio.Event()

    async def react(batch: Any) -> None:
        calls[batch.store] = calls.get(batch.store, 0) + 1
        if batch.store == "bad":
            if batch.attempt >= 2:
                retried.set()
            raise RuntimeError("boom in the handler")
        await answer_questions(batch)

    bad1, bad2 = device(tmp_path / "bad1.db"), device(tmp_path / "bad2.db")
    good = device(tmp_path / "good.db")
    caplog.set_level(logging.ERROR, logger="crsync_relay.reactor")
    with trio.fail_after(LIMIT):
        async with (
            relay(tmp_path / "relay", react) as (url, _hub),
            peer(bad1, url, "bad"),
            peer(bad2, url, "bad"),
            peer(good, url, "good"),
        ):
            bad1.conn.execute("INSERT INTO requests (id, question) VALUES ('x', 'abc')")
            good.conn.execute("INSERT INTO requests (id, question) VALUES ('y', 'xyz')")
            assert await answered(good, "y") == "zyx"
            # sync in the failing store still works both ways
            async with bad2.watch("SELECT question FROM requests WHERE id = 'x'") as live:
                async for rows in live:
                    if rows == [("abc",)]:
                        break
            await retried.wait()  # the same batch is delivered again (backoff)
    assert bad2.conn.execute("SELECT answer FROM requests").fetchall() == [(None,)]
    failures = [r for r in caplog.records if "relay.reactor.failed" in r.getMessage()]
    assert failures and "store=bad" in failures[0].getMessage()
    assert "first_table=requests" in failures[0].getMessage()
    assert "RuntimeError: boom in the handler" in failures[0].getMessage()


async def leave_a_batch_unhandled(data: Path, a: crsync.Database) -> None:
    """Push a request to store ``s`` of a relay whose reactor never finishes, then stop it."""
    started = trio.Event()

    async def stuck(batch: Any) -> None:
        started.set()
        await trio.sleep_forever()  # never finishes: the relay stops under it

    async with relay(data, stuck) as (url, _hub), peer(a, url, "s") as pa:
        a.conn.execute("INSERT INTO requests (id, question) VALUES ('r', 'later')")
        await pa.wait_synced()
        await started.wait()


async def test_relay_restart_redelivers_changes_the_reactor_had_not_finished(
    tmp_path: Path,
) -> None:
    a = device(tmp_path / "a.db")
    data = tmp_path / "relay"
    with trio.fail_after(LIMIT):
        await leave_a_batch_unhandled(data, a)
        assert store_meta(data, "s").get("reactor_cursor", 0) == 0
        async with (  # restart, nobody pushes
            relay(data, answer_questions) as (url, _hub),
            peer(a, url, "s"),
        ):
            assert await answered(a, "r") == "retal"
    assert store_meta(data, "s")["reactor_cursor"] >= 1


async def test_restart_catch_up_finds_stores_in_a_data_dir_whose_name_holds_uri_syntax(
    tmp_path: Path,
) -> None:
    """The startup peek at each store's reactor cursor opens the file by its exact path: a
    ``#`` or ``?`` in the data directory's name is not read as URI syntax."""
    a = device(tmp_path / "a.db")
    data = tmp_path / "relay #1?x=%41"
    with trio.fail_after(LIMIT):
        await leave_a_batch_unhandled(data, a)
        answered_now = trio.Event()

        async def answer(batch: Any) -> None:
            await answer_questions(batch)
            answered_now.set()

        # Restart with no device connected and nothing pushed: only the startup peek at the
        # store's cursor can hand the batch to the reactor again.
        async with relay(data, answer):
            await answered_now.wait()


async def test_reactor_stores_pattern_restricts_which_stores_run_it(tmp_path: Path) -> None:
    seen: list[str] = []

    async def react(batch: Any) -> None:
        seen.append(batch.store)
        await answer_questions(batch)

    on, off = device(tmp_path / "on.db"), device(tmp_path / "off.db")
    with trio.fail_after(LIMIT):
        async with (
            relay(tmp_path / "relay", react, stores="team-*,x") as (url, _hub),
            peer(on, url, "team-1") as p_on,
            peer(off, url, "other") as p_off,
        ):
            off.conn.execute("INSERT INTO requests (id, question) VALUES ('o', 'no')")
            await p_off.wait_synced()
            on.conn.execute("INSERT INTO requests (id, question) VALUES ('t', 'yes')")
            assert await answered(on, "t") == "sey"
            await p_on.wait_synced()
    assert set(seen) == {"team-1"}
    assert "reactor_cursor" not in store_meta(tmp_path / "relay", "other")


def test_reactor_option_errors_are_clear(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["serve", "--data-dir", str(tmp_path), "--dev", "--port", "0"]
    r = runner.invoke(relay_cli, [*base, "--reactor", "no_such_module_xyz:react"])
    assert r.exit_code == 2
    assert "cannot load reactor 'no_such_module_xyz:react'" in r.output
    r = runner.invoke(relay_cli, [*base, "--reactor-stores", "a*"])
    assert r.exit_code == 2 and "--reactor-stores needs --reactor" in r.output
    sync_fn = tmp_path / "sync_reactor.py"
    sync_fn.write_text("def react(batch):\n    pass\n")
    r = runner.invoke(relay_cli, [*base, "--reactor", f"{sync_fn}:react"])
    assert r.exit_code == 2 and "must be an async function" in r.output
    with pytest.raises(crsync.CrsyncError, match="module:object"):
        RelayConfig(data_dir=tmp_path, dev=True, reactor="nocolon").reactor_handler()


async def test_devices_cannot_write_or_connect_as_the_reactors_site(tmp_path: Path) -> None:
    """Security review M1: a peer claiming the relay's own site id could hide rows from the
    reactor and forge "server-computed" answers. Both the hello and the changes are refused."""
    import os

    from websockets.trio.client import connect as ws_connect

    from crsync import Change, pack_pk
    from crsync import protocol as p

    a = device(tmp_path / "a.db")
    schema = {"requests": p.TableSchema(("id",), ("answer", "question"))}
    with trio.fail_after(LIMIT):
        async with relay(tmp_path / "relay", answer_questions) as (url, _hub):
            async with peer(a, url, "s"):
                a.conn.execute("INSERT INTO requests (id, question) VALUES ('r1', 'hi')")
                assert await answered(a, "r1") == "ih"
            relay_site = store_meta(tmp_path / "relay", "s")["relay_site"]

            async def exchange(hello_site: bytes, changes: list[Change]) -> p.Message:
                async with ws_connect(url, compression=None) as ws:
                    await ws.send(p.encode(p.Hello(1, "s", hello_site, schema, 0, "", None)))
                    msg = p.decode(await ws.recv())
                    if isinstance(msg, p.Error) or not changes:
                        return msg
                    await ws.send(p.encode(p.Push(1, 0, 1, changes)))
                    while True:
                        msg = p.decode(await ws.recv())
                        if isinstance(msg, p.Ack | p.Error):
                            return msg

            refused = await exchange(relay_site, [])
            assert isinstance(refused, p.Error) and refused.code == "forbidden"
            forged = Change("requests", pack_pk(["r2"]), "answer", "yes", 1, 1, relay_site, 1, 0)
            site = os.urandom(16)
            honest = Change("requests", pack_pk(["r3"]), "question", "ok", 1, 1, site, 1, 0)
            acked = await exchange(os.urandom(16), [forged, honest])
            assert isinstance(acked, p.Ack)  # the rest of the unit is merged
            b = device(tmp_path / "b.db")
            async with peer(b, url, "s") as pb:
                await pb.wait_synced()
            got = dict(b.conn.execute("SELECT id, answer FROM requests").fetchall())
            assert "r2" not in got  # the forged "server answer" never entered the store
            assert "r3" in got


async def test_a_row_the_reactor_cannot_process_is_set_aside_after_bounded_retries(
    tmp_path: Path,
) -> None:
    """Security review M1: one poisoned row stalled a store's reactor forever."""
    from crsync_relay.server import run_relay

    async def react(batch: Any) -> None:
        for row in batch.rows():
            cur = await batch.row("requests", row.pk)
            if cur is not None and cur.values.get("question") == "poison":
                raise ValueError("cannot handle this request")
        await answer_questions(batch)

    a = device(tmp_path / "a.db")
    config = RelayConfig(
        data_dir=tmp_path / "relay",
        port=0,
        dev=True,
        reactor=react,
        reactor_max_attempts=2,
        reactor_backoff=(0.01, 0.05),
    )
    with trio.fail_after(LIMIT):
        async with trio.open_nursery() as nursery:
            server, _hub = await nursery.start(
                lambda task_status: run_relay(config, task_status=task_status, handle_signals=False)
            )
            port = sorted({lst.socket.getsockname()[1] for lst in server.listeners})[0]
            async with peer(a, f"ws://127.0.0.1:{port}", "s") as pa:
                a.conn.execute("INSERT INTO requests (id, question) VALUES ('p', 'poison')")
                await pa.wait_synced()  # its own relay version: what gets set aside
                a.conn.execute("INSERT INTO requests (id, question) VALUES ('ok', 'fine')")
                assert await answered(a, "ok") == "enif"
                a.conn.execute("INSERT INTO requests (id, question) VALUES ('later', 'abc')")
                assert await answered(a, "later") == "cba"
            nursery.cancel_scope.cancel()
    conn = sqlite3.connect(tmp_path / "relay" / "s.store.sqlite3")
    set_aside = conn.execute("SELECT base, upto, reason FROM reactor_set_aside").fetchall()
    conn.close()
    assert len(set_aside) == 1 and "cannot handle this request" in set_aside[0][2]
