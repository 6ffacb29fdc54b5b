"""Hostile clients against a real relay: fuzzed frames over real sockets, an authorization
matrix, and names crafted for SQL injection.

The relay must never crash, never stop serving honest peers, keep its memory bounded, keep
every store file intact, and never let a client read or write a store its token does not cover.
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import anyio
import msgpack
import pytest
import trio
from crsync_relay.auth import issue_token
from sync.conftest import RelayProcess
from sync.helpers import TODOS, open_db, rows, ws_client
from websockets.exceptions import ConnectionClosed, InvalidHandshake

import crsync
from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.peer import Peer, PeerState

from .attack import rss_kib
from .conftest import LONG, RelayFactory, integrity

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

MAX_FRAME = 64 * 1024
CONNECTIONS = 2000 if LONG else 160
SCHEMA = {"todos": p.TableSchema(("id",), ("data", "done", "title"))}
OPTS: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.3}


def _value(rnd: random.Random) -> Any:
    return rnd.choice(
        [
            None,
            rnd.randint(-(2**63), 2**63 - 1),
            rnd.random() * 1e300,
            "x" * rnd.randrange(0, 300),
            os.urandom(rnd.randrange(0, 40)),
            "é\u0000\ud7ff",
        ]
    )


def _change(rnd: random.Random, site: bytes) -> list[Any]:
    table = rnd.choice(["todos", "todos", "ghost", 'x"; DROP TABLE todos; --', "a" * 3000])
    pk = rnd.choice(
        [pack_pk([str(rnd.randrange(50))]), pack_pk([1, 2]), os.urandom(rnd.randrange(0, 12))]
    )
    cid = rnd.choice(["title", "done", "-1", "nope", 'title" = 1; --', ""])
    big = rnd.choice([0, 1, 2**62, 2**63 - 1])
    forged = rnd.choice([site, os.urandom(16), bytes(16)])
    return [
        table,
        pk,
        cid,
        _value(rnd),
        big or rnd.randrange(1, 9),
        rnd.randrange(0, 99),
        forged,
        rnd.randrange(1, 5),
        rnd.randrange(0, 99),
    ]


def _plausible(rnd: random.Random, site: bytes) -> list[Any]:
    """A well-formed row with hostile content: forged author, huge versions, unknown names."""
    return [
        rnd.choice(["todos", "ghost", 'x"; DROP TABLE todos; --']),
        pack_pk([str(rnd.randrange(50))]),
        rnd.choice(["title", "done", "nope", 'title" = 1; --']),
        _value(rnd),
        rnd.choice([1, 2, 2**62, 2**63 - 1]),
        rnd.choice([1, 2**63 - 1]),
        rnd.choice([site, os.urandom(16), bytes(16)]),
        rnd.choice([1, 3, 2**40 + 1]),
        rnd.randrange(0, 2**31),
    ]


def _mutate(rnd: random.Random, frame: bytes) -> bytes:
    b = bytearray(frame)
    for _ in range(rnd.randrange(1, 5)):
        i = rnd.randrange(max(len(b), 1))
        op = rnd.randrange(4)
        if op == 0 and b:
            b[i] ^= rnd.randrange(1, 256)
        elif op == 1:
            del b[i:]
        elif op == 2:
            b[i:i] = os.urandom(rnd.randrange(1, 9))
        else:
            b[i:i] = b[i : i + rnd.randrange(1, 64)]
    return bytes(b)


def _frames(rnd: random.Random, token: str) -> list[bytes]:
    site = os.urandom(16)
    hello = p.encode(p.Hello(1, "victim", site, SCHEMA, rnd.randrange(3), "", token))
    out = [hello if rnd.random() < 0.85 else _mutate(rnd, hello)]
    for n in range(rnd.randrange(1, 6)):
        kind = rnd.randrange(6)
        if kind == 5:
            rows = [_plausible(rnd, site) for _ in range(rnd.randrange(1, 20))]
            body = {"t": "push", "batch": n + 1, "base": n, "upto": n + 1, "more": False}
            frame = msgpack.packb({**body, "changes": rows}, use_bin_type=True)
        elif kind == 0:
            upto = rnd.choice([1, n + 1, 2**63 - 1])
            body = {
                "t": "push",
                "batch": n + 1,
                "base": 0,
                "upto": upto,
                "more": rnd.random() < 0.2,
                "changes": [_change(rnd, site) for _ in range(rnd.randrange(1, 20))],
            }
            frame: bytes = msgpack.packb(body, use_bin_type=True)
        elif kind == 1:
            frame = p.encode(p.Received(rnd.choice([0, 5, 2**63 - 1])))
        elif kind == 2:
            frame = p.encode(p.Ping(rnd.randrange(2**31)))
        elif kind == 3:
            frame = os.urandom(rnd.randrange(1, 200))
        else:
            frame = _mutate(
                rnd,
                p.encode(
                    p.Push(
                        n + 1,
                        0,
                        1,
                        [Change("todos", pack_pk(["m"]), "title", "v", 1, 1, site, 1, 0)],
                    )
                ),
            )
        out.append(frame)
    return out


async def _hostile(url: str, rnd: random.Random, token: str, n: int, seen: dict[str, int]) -> None:
    for _ in range(n):
        frames = _frames(rnd, token)
        try:
            async with ws_client(url, proxy=None, max_size=None, compression=None) as ws:
                for f in frames:
                    await ws.send(f)
                    seen["frames"] += 1
                with anyio.move_on_after(0.5):  # the relay answers, or closes, or waits for more
                    async for raw in ws:
                        try:
                            m = p.decode(raw)
                        except crsync.ProtocolError:
                            raise AssertionError(
                                f"relay sent an undecodable frame {raw!r}"
                            ) from None
                        key = m.code if isinstance(m, p.Error) else m.TYPE
                        seen[key] = seen.get(key, 0) + 1
        except (
            ConnectionClosed,
            InvalidHandshake,
            OSError,
            anyio.BrokenResourceError,
            trio.BrokenResourceError,  # (websockets' trio client, in a handshake)
        ):
            pass
        seen["connections"] += 1


async def _honest_round(ps: list[Peer], a: crsync.Database, b: crsync.Database, key: str) -> None:
    a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'honest')", (key,))
    for peer in ps:
        await peer.wait_synced()
    assert (key, "honest", 0, None) in rows(b)


async def test_fuzzed_frames_over_sockets_leave_the_relay_serving_and_stores_intact(
    relay_factory: RelayFactory, tmp_path: Path
) -> None:
    relay: RelayProcess = relay_factory("--max-frame-bytes", str(MAX_FRAME))
    assert relay.proc is not None
    token = relay.token("victim")
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    seen: dict[str, int] = {"frames": 0, "connections": 0}
    with anyio.fail_after(CONNECTIONS + 60):
        hon = {"store": "honest", "token": relay.token("honest"), **OPTS}
        async with Peer(a, relay.url, **hon) as g1, Peer(b, relay.url, **hon) as g2:
            await _honest_round([g1, g2], a, b, "warm")
            rss_before = rss_kib(relay.proc.pid)
            async with anyio.create_task_group() as nursery:
                for i in range(4):
                    nursery.start_soon(
                        _hostile, relay.url, random.Random(i), token, CONNECTIONS // 4, seen
                    )
                for i in range(5):  # honest traffic keeps flowing during the attack
                    await _honest_round([g1, g2], a, b, f"during{i}")
            await _honest_round([g1, g2], a, b, "after")
            rss_after = rss_kib(relay.proc.pid)
        # an honest device on the attacked store can still sync everything that was accepted
        v = open_db(tmp_path / "v.db", TODOS)
        async with Peer(v, relay.url, store="victim", token=token, **OPTS) as pv:
            await pv.wait_synced()
            assert pv.state is not PeerState.ERROR
        assert [r[0] for r in v.conn.execute("SELECT name FROM sqlite_master WHERE name='todos'")]
    assert relay.proc.poll() is None, "the relay died"
    assert relay.count("relay.internal_error") == 0, relay.log[-3000:]
    assert rss_after - rss_before < 100 * 1024, (rss_before, rss_after)
    relay.stop()
    for f in relay.data_dir.glob("*.store.sqlite3"):
        assert integrity(f) == "ok", f
    print(f"\nHOSTILE_RELAY seen={seen} rss_kib={rss_before}->{rss_after}")


# ---------------------------------------------------------------------------- authorization


def _tokens(relay: RelayProcess) -> dict[str, str | None]:
    return {
        "other-store": relay.token("mallory"),
        "prefix-of-other": relay.token("mal*"),
        "expired": relay.token("alice", ttl=10, now=time.time() - 100),
        "bad-signature": issue_token(os.urandom(32) * 2, ["alice"], 3600),
        "unsigned": issue_token(b"k" * 32, ["alice"], 3600)[:-10] + "AAAAAAAAAA",
        "garbage": "not-a-jwt",
        "none": None,
    }


EXPECTED = {
    "other-store": "forbidden",
    "prefix-of-other": "forbidden",
    "expired": "token_expired",
    "bad-signature": "unauthorized",
    "unsigned": "unauthorized",
    "garbage": "unauthorized",
    "none": "unauthorized",
}
SITE = os.urandom(16)
ROW = Change("todos", pack_pk(["stolen"]), "title", "x", 1, 1, SITE, 1, 0)
AFTER_HELLO: dict[str, p.Message] = {
    "push": p.Push(1, 0, 1, [ROW]),
    "received": p.Received(0),
    "ping": p.Ping(1),
}
ALL_TYPES: list[p.Message] = [
    *AFTER_HELLO.values(),
    p.Welcome(1, "e", 0, 0),
    p.Ack(1, 1, 1),
    p.Changes(0, 1, [ROW]),
    p.Pong(1, 1),
    p.Error("internal", "x"),
]


async def _exchange(url: str, frames: list[bytes]) -> list[p.Message]:
    got: list[p.Message] = []
    async with ws_client(url, proxy=None, compression=None) as ws:
        for f in frames:
            try:
                await ws.send(f)
            except ConnectionClosed:  # the relay closed after its error frame: read that
                break
        try:
            with anyio.fail_after(10):
                async for raw in ws:
                    got.append(p.decode(raw))
        except ConnectionClosed:
            pass
    return got


def _store_state(path: Path) -> tuple[Any, ...]:
    conn = sqlite3.connect(path)
    try:
        return (
            conn.execute("SELECT value FROM relay_meta WHERE key = 'head'").fetchone(),
            conn.execute("SELECT count(*) FROM relay_cells").fetchone(),
            conn.execute("SELECT count(*) FROM relay_peers WHERE site_id = ?", (SITE,)).fetchone(),
        )
    finally:
        conn.close()


async def test_no_message_type_reads_or_writes_a_store_without_a_valid_token_for_it(
    relay: RelayProcess, tmp_path: Path
) -> None:
    a = open_db(tmp_path / "a.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('secret', 'alice data')")
    with anyio.fail_after(60):
        async with Peer(a, relay.url, store="alice", token=relay.token("alice"), **OPTS) as pa:
            await pa.wait_synced()
        before = _store_state(relay.store_path("alice"))
        tried = 0
        for kind, token in _tokens(relay).items():
            hello = p.encode(p.Hello(1, "alice", SITE, SCHEMA, 0, "", token))
            # hello with the bad token, then every message a peer may send
            for name, msg in AFTER_HELLO.items():
                got = await _exchange(relay.url, [hello, p.encode(msg)])
                assert [type(m) for m in got] == [p.Error], (kind, name, got)
                assert got[0].code == EXPECTED[kind], (kind, name, got)  # type: ignore[union-attr]
                tried += 1
        # every message type without any hello
        for msg in ALL_TYPES:
            got = await _exchange(relay.url, [p.encode(msg)])
            assert [type(m) for m in got] == [p.Error], (msg, got)
            assert got[0].code == "unexpected_message"  # type: ignore[union-attr]
            tried += 1
    assert _store_state(relay.store_path("alice")) == before
    stores = [f.name for f in relay.data_dir.glob("*.sqlite3") if not f.name.startswith(".")]
    assert stores == ["alice.store.sqlite3"]  # (dot files: the relay's own lock and index)
    print(f"\nAUTHZ combinations={tried}")


async def test_names_crafted_for_sql_injection_are_only_data(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """A client pushes changes whose table and column names are SQL. Names that no hello
    announced are refused at push (nothing stored); names announced in a hello are stored as
    data and devices keep them aside (unknown table/column), executing nothing."""
    token = relay.token("inj")
    site = os.urandom(16)
    evil = [
        Change('todos"; DROP TABLE todos; --', pack_pk(["1"]), "title", "x", 1, 1, site, 1, 0),
        Change("todos", pack_pk(["1"]), 'title" = 1; DROP TABLE todos; --', "x", 1, 1, site, 1, 0),
        Change("sqlite_master", pack_pk(["1"]), "sql", "x", 1, 1, site, 1, 0),
    ]
    hello = p.encode(p.Hello(1, "inj", site, SCHEMA, 0, "", token))
    for change in evil:
        got = await _exchange_until_ack(relay.url, [hello, p.encode(p.Push(1, 0, 1, [change]))])
        assert isinstance(got, p.Error) and got.code == "invalid_changes", got
        assert "announced" in got.reason
    announced = {
        'todos"; DROP TABLE todos; --': p.TableSchema(("id",), ("title",)),
        "todos": p.TableSchema(
            ("id",), ("data", "done", "title", 'title" = 1; DROP TABLE todos; --')
        ),
        "sqlite_master": p.TableSchema(("id",), ("sql",)),
    }
    hello = p.encode(p.Hello(1, "inj", site, announced, 0, "", token))
    got = await _exchange_until_ack(relay.url, [hello, p.encode(p.Push(1, 0, 1, evil))])
    assert isinstance(got, p.Ack)
    d = open_db(tmp_path / "d.db")
    d.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'mine')")
    with anyio.fail_after(30):
        async with Peer(d, relay.url, store="inj", token=token, **OPTS) as pd:
            await pd.wait_synced()
            assert pd.state is not PeerState.ERROR
    assert rows(d) == [("1", "mine", 0, None)]
    assert d.pending_count() == 3


POISON_KEYS = {
    "nan-key": ("todos", pack_pk([math.nan])),
    "lone-surrogate-key": ("todos", b"\x01\x0b\x03\xed\xa0\x80"),
    "wrong-arity": ("todos", pack_pk(["a", "b"])),
    "unannounced-table": ("ghost", pack_pk(["a"])),
}


@pytest.mark.parametrize("case", sorted(POISON_KEYS))
async def test_keys_no_device_can_apply_are_refused_at_push(
    relay: RelayProcess, tmp_path: Path, case: str
) -> None:
    """Security review H2: the relay acknowledged keys no device could merge, stopping every
    device of the store. They are refused at push, nothing is stored, devices keep syncing."""
    table, pk = POISON_KEYS[case]
    token = relay.token("pills")
    site = os.urandom(16)
    hello = p.encode(p.Hello(1, "pills", site, SCHEMA, 0, "", token))
    poison = Change(table, pk, "title", "x", 1, 1, site, 1, 0)
    got = await _exchange_until_ack(relay.url, [hello, p.encode(p.Push(1, 0, 1, [poison]))])
    assert isinstance(got, p.Error) and got.code == "invalid_changes", got
    d = open_db(tmp_path / "d.db")
    d.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'mine')")
    with anyio.fail_after(30):
        async with Peer(d, relay.url, store="pills", token=token, **OPTS) as pd:
            await pd.wait_synced()
            assert pd.state is not PeerState.ERROR
            assert pd.relay_head == 1  # only the device's own row is in the store


async def _exchange_until_ack(url: str, frames: list[bytes]) -> p.Message:
    async with ws_client(url, proxy=None, compression=None) as ws:
        for f in frames:
            await ws.send(f)
        with anyio.fail_after(10):
            while True:
                m = p.decode(await ws.recv())
                if not isinstance(m, p.Welcome):
                    return m


PREFIX_SCOPES = [
    ("alice*", "alice", True),
    ("alice*", "alice.notes", True),
    ("alice*", "alice.photos.2026", True),
    ("alice*", "alice2", False),
    ("alice*", "alicebob", False),
    ("alice*", "alice-evil", False),
    ("alice*", "alice_x", False),
    ("team-*", "team-red", True),
    ("team-*", "team", False),
    ("team-*", "teamx", False),
    ("*", "anyone", True),
]


async def test_prefix_scopes_grant_whole_segments_only(relay: RelayProcess) -> None:
    """Security review L4: a token for ``alice*`` must not open (or create) ``alicebob``."""
    outcomes = {}
    for scope, store, _ in PREFIX_SCOPES:
        hello = p.encode(p.Hello(1, store, os.urandom(16), SCHEMA, 0, "", relay.token(scope)))
        async with ws_client(relay.url, proxy=None, compression=None) as ws:
            await ws.send(hello)
            with anyio.fail_after(10):
                msg = p.decode(await ws.recv())
        outcomes[(scope, store)] = isinstance(msg, p.Welcome)
        if not outcomes[(scope, store)]:
            assert isinstance(msg, p.Error) and msg.code == "forbidden", msg
            assert not relay.store_path(store).exists()
    assert outcomes == {(scope, store): ok for scope, store, ok in PREFIX_SCOPES}
