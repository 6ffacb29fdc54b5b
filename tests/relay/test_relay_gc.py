"""Tombstone collection on a real relay process: the horizon and what remains in the welcome,
collected tombstones served to new devices, ``crsync-relay gc`` and ``stores --details``, the
metrics, a clock skewed by ``CRSYNC_RELAY_CLOCK_SKEW`` (400 days pass), resumed catch-up
units (docs/concepts.md, "Tombstones and the horizon"; docs/protocol.md rules 10 and 11)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from crsync_relay.process import RelayLauncher
from websockets.trio.client import connect

import crsync
from crsync import protocol as p
from crsync.change import COLLECTED_SITE
from crsync.peer import Peer

ROOT = Path(__file__).resolve().parents[2]
# tests/relay is not a package: the private PostgreSQL harness is imported from tests/.
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from store.pg_fixtures import pg_server  # noqa: E402, F401  (the fixture)

pytestmark = pytest.mark.e2e

DAY = 86_400
SCHEMA = "CREATE TABLE notes (id INTEGER PRIMARY KEY NOT NULL, body TEXT)"
NEW_SITE = bytes(range(1, 17))


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "crsync_relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, **(env or {})},
    )


def _metrics(relay: RelayLauncher) -> str:
    m = re.search(r"relay\.metrics host=\S+ port=(\d+)", relay.log)
    assert m, relay.log
    with urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _metric(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not in metrics"
    return float(m.group(1))


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayLauncher]]:
    started: list[RelayLauncher] = []
    yield started
    for r in started:
        r.stop()


def _relay(
    relays: list[RelayLauncher], data_dir: Path, skew_days: float = 0, port: int = 0
) -> RelayLauncher:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    if skew_days:
        env["CRSYNC_RELAY_CLOCK_SKEW"] = str(skew_days * DAY)
    args = ["--metrics-port", "0", "--gc-interval", "0"]
    if port:
        args += ["--port", str(port)]
    relay = RelayLauncher(data_dir, args=args, env=env)
    relays.append(relay)
    relay.start()
    return relay


def _db(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(SCHEMA)
    db.track("notes", integer_keys="app-assigned")
    return db


def _notes(db: crsync.Database) -> list[tuple[object, ...]]:
    return [tuple(r) for r in db.conn.execute("SELECT id, body FROM notes ORDER BY id")]


async def _sync(db: crsync.Database, url: str) -> None:
    with trio.fail_after(30):
        async with Peer(db, url, store="s") as peer:
            await peer.wait_synced()


async def _hello(
    url: str, cursor: int = 0, epoch: str = "", resume: p.Resume | None = None
) -> tuple[p.Welcome, list[p.Changes]]:
    """A raw device at ``cursor``: its welcome and the frames of its first catch-up unit."""
    schema = {"notes": p.TableSchema(("id",), ("body",))}
    hello = p.Hello(p.PROTOCOL_VERSION, "s", NEW_SITE, schema, cursor, epoch, None, resume=resume)
    frames: list[p.Changes] = []
    with trio.fail_after(30):
        async with connect(url, max_size=None) as ws:
            await ws.send(p.encode(hello))
            welcome = p.decode(await ws.recv())
            assert isinstance(welcome, p.Welcome), welcome
            while True:
                msg = p.decode(await ws.recv())
                assert isinstance(msg, p.Changes), msg
                frames.append(msg)
                if not msg.more:
                    break
    return welcome, frames


async def test_a_new_device_receives_collected_tombstones_and_the_horizon(
    tmp_path: Path, relays: list[RelayLauncher]
) -> None:
    relay = _relay(relays, tmp_path / "relay")
    a = _db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    await _sync(a, relay.url)
    a.conn.execute("DELETE FROM notes WHERE id = 2")
    await _sync(a, relay.url)
    a.conn.execute("UPDATE notes SET body = 'ONE' WHERE id = 1")
    await _sync(a, relay.url)
    await _sync(a, relay.url)  # its hello's cursor: a merged everything up to the head
    # On demand, while the relay serves: the delete is collected.
    done = _cli("gc", "--data-dir", str(tmp_path / "relay"), "--store", "s")
    assert done.returncode == 0, done.stderr
    assert re.search(r"store s: horizon 3, collected 1 tombstone\(s\), 0 device", done.stdout)
    welcome, frames = await _hello(relay.url)
    assert (welcome.head, welcome.horizon, welcome.resumed) == (3, 3, False)
    got = [c for f in frames for c in f.changes]
    assert welcome.remaining == len(got)
    graves = [c for c in got if c.site_id == COLLECTED_SITE]
    assert [(c.pk, c.cid, c.cl, c.db_version, c.seq) for c in graves] == [
        (crsync.pack_pk([2]), "-1", 2, 0, 0)
    ]
    # A device merges them like the tombstone: row 2 stays deleted, nothing else is lost.
    b = _db(tmp_path / "b.db")
    await _sync(b, relay.url)
    assert _notes(b) == [(1, "ONE"), (3, "three")]
    listed = _cli("stores", "--data-dir", str(tmp_path / "relay"), "--details")
    assert listed.returncode == 0, listed.stderr
    assert "horizon 3" in listed.stdout and "collected 1" in listed.stdout
    assert a.site_id.hex() in listed.stdout and "active" in listed.stdout
    text = _metrics(relay)
    assert _metric(text, "crsync_relay_gc_runs_total") >= 1


@pytest.mark.slow
async def test_400_days_later_an_absent_device_has_departed_and_is_readmitted_by_catch_up(
    tmp_path: Path, relays: list[RelayLauncher]
) -> None:
    data = tmp_path / "relay"
    relay = _relay(relays, data)
    a = _db(tmp_path / "a.db")
    b = _db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two'), (3, 'three')")
    await _sync(a, relay.url)
    await _sync(b, relay.url)
    relay.stop()
    # 400 days later (a skewed relay clock): a keeps syncing, b is in a drawer.
    relay = _relay(relays, data, skew_days=400, port=relay.port)
    a.conn.execute("DELETE FROM notes WHERE id = 2")
    a.conn.execute("UPDATE notes SET body = 'ONE' WHERE id = 1")
    await _sync(a, relay.url)
    await _sync(a, relay.url)
    done = _cli(
        "gc", "--data-dir", str(data), "--store", "s",
        env={"CRSYNC_RELAY_CLOCK_SKEW": str(400 * DAY)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "collected 1 tombstone(s)" in done.stdout
    # b departed when the relay collected the store as it opened (a connected).
    relay.wait_for(r"relay\.gc store=s horizon=\d+ collected=0 departed=1", timeout=20)
    listed = _cli(
        "stores", "--data-dir", str(data), "--details",
        env={"CRSYNC_RELAY_CLOCK_SKEW": str(400 * DAY)},
    )  # fmt: skip
    line = next(x for x in listed.stdout.splitlines() if b.site_id.hex() in x)
    assert line.split()[-3:] == ["0", "0", "departed"]
    # b edited row 3 while away; it returns: the delete reaches it, its edit is kept and pushed.
    b.conn.execute("UPDATE notes SET body = 'THREE' WHERE id = 3")
    await _sync(b, relay.url)
    assert _notes(b) == [(1, "ONE"), (3, "THREE")]
    await _sync(a, relay.url)
    assert _notes(a) == [(1, "ONE"), (3, "THREE")]
    listed = _cli(
        "stores", "--data-dir", str(data), "--details",
        env={"CRSYNC_RELAY_CLOCK_SKEW": str(400 * DAY)},
    )  # fmt: skip
    line = next(x for x in listed.stdout.splitlines() if b.site_id.hex() in x)
    assert line.split()[-1] == "active"


async def test_the_relay_collects_a_store_when_it_opens_and_reports_it_in_metrics(
    tmp_path: Path, relays: list[RelayLauncher]
) -> None:
    data = tmp_path / "relay"
    relay = _relay(relays, data)
    a = _db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO notes VALUES (1, 'one'), (2, 'two')")
    await _sync(a, relay.url)
    a.conn.execute("DELETE FROM notes")
    await _sync(a, relay.url)
    await _sync(a, relay.url)  # its hello's cursor: a merged everything up to the head
    relay.stop()
    relay = _relay(relays, data, port=relay.port)
    await _sync(a, relay.url)  # opens the store: collected once
    relay.wait_for(r"relay\.gc store=s horizon=\d+ collected=2", timeout=20)
    text = _metrics(relay)
    assert _metric(text, "crsync_relay_graves") == 2
    assert _metric(text, "crsync_relay_tombstones") == 0
    assert _metric(text, "crsync_relay_tombstones_collected_total") == 2
    assert _metric(text, "crsync_relay_devices_departed") == 0


@pytest.mark.slow
async def test_a_catch_up_unit_dropped_midway_resumes_after_the_last_change_held(
    tmp_path: Path, relays: list[RelayLauncher]
) -> None:
    relay = _relay(relays, tmp_path / "relay")
    a = _db(tmp_path / "a.db")
    with a.conn:
        a.conn.executemany(
            "INSERT INTO notes VALUES (?, ?)", [(i, f"n{i}") for i in range(1, 6001)]
        )
    await _sync(a, relay.url)
    schema = {"notes": p.TableSchema(("id",), ("body",))}
    hello = p.Hello(p.PROTOCOL_VERSION, "s", NEW_SITE, schema, 0, "", None)
    with trio.fail_after(30):
        async with connect(relay.url, max_size=None) as ws:
            await ws.send(p.encode(hello))
            welcome = p.decode(await ws.recv())
            assert isinstance(welcome, p.Welcome)
            first = p.decode(await ws.recv())
    assert isinstance(first, p.Changes) and first.more and first.upto == 1
    total = welcome.remaining
    assert total == 6000  # 6000 rows of one cell (body), one relay version
    last = first.changes[-1]
    resume = p.Resume(first.upto, last.table, last.pk, last.cid)
    again, rest = await _hello(relay.url, 0, welcome.epoch, resume)
    assert again.resumed and again.remaining == total - len(first.changes)
    got = [c for f in rest for c in f.changes]
    assert len(got) == again.remaining
    keys = [(c.table, c.pk, c.cid) for c in first.changes + got]
    assert keys == sorted(keys) and len(set(keys)) == total
    assert all(f.base == 0 and f.upto == 1 for f in rest)
    # A unit that no longer stands (another epoch) is not resumed: served from the start.
    fresh, frames = await _hello(relay.url, 0, "another epoch", resume)
    assert not fresh.resumed and fresh.remaining == total
    assert sum(len(f.changes) for f in frames) == total


def test_gc_max_offline_and_details_work_on_a_postgresql_database(
    pg_server: Any,  # noqa: F811  (the fixture imported above)
) -> None:
    import uuid

    from crsync_relay.pg_store import PgDatabase

    name = f"gc_{uuid.uuid4().hex[:8]}"
    conninfo = pg_server.create_database(name)
    url = pg_server.url(name)
    a, b = bytes([0xA] * 16), bytes([0xB] * 16)
    with PgDatabase(conninfo, max_size=2) as db:
        s = db.open_store("alice")
        notes = crsync.pack_pk
        s.merge_push(a, 1, [crsync.Change("n", notes([1]), "b", "x", 1, 1, a, 1, 0)])
        s.merge_push(a, 2, [crsync.Change("n", notes([1]), "-1", None, 2, 2, a, 2, 0)])
        s.record_received(a, 2)
        s.record_received(b, 1)
    shown = _cli("max-offline", "--database", url, "alice")
    assert shown.stdout.strip() == "store alice: max-offline 180 days", shown.stderr
    assert _cli("max-offline", "--database", url, "alice", "10").returncode == 0
    done = _cli("gc", "--database", url)
    assert done.returncode == 0, done.stderr
    assert "store alice: horizon 1, collected 0 tombstone(s), 0 device(s) departed" in done.stdout
    later = {"CRSYNC_RELAY_CLOCK_SKEW": str(11 * DAY)}
    done = _cli("gc", "--database", url, "--store", "alice", env=later)
    assert "store alice: horizon 2, collected 1 tombstone(s), 2 device(s) departed" in done.stdout
    listed = _cli("stores", "--database", url, "--details", env=later)
    assert listed.returncode == 0, listed.stderr
    assert "collected 1" in listed.stdout and "max-offline 10 days" in listed.stdout
    assert listed.stdout.count("departed") == 2
    missing = _cli("gc", "--database", url, "--store", "nobody")
    assert missing.returncode == 1 and "nobody" in missing.stderr
