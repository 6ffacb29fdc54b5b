"""A token holder cannot speak for another device (security review H4, M1), against a real relay.

A device's hello carries a ``site_key``: the relay binds the site id to it on first use. Another
client claiming that site id is refused (``site_forbidden``) and learns nothing (no ``acked``),
so it cannot acknowledge the device's offline writes away. A change's author field is only a
claim: broadcasts skip cells for the connection that pushed them, so a write forged under
another device's site id reaches that device too, and every device converges.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from sync.conftest import RelayProcess
from sync.helpers import open_db, rows, ws_client

from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.peer import Peer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

SCHEMA = {"todos": p.TableSchema(("id",), ("title",))}


class Raw:
    """A protocol client on a real socket."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, msg: p.Message) -> None:
        await self.ws.send(p.encode(msg))

    async def recv(self) -> p.Message:
        with anyio.fail_after(10):
            return p.decode(await self.ws.recv())

    async def until(self, kind: type) -> Any:
        while True:
            msg = await self.recv()
            if isinstance(msg, (kind, p.Error)):
                return msg


def _hello(
    store: str, site: bytes, token: str, key: bytes | None, epoch: str = ""
) -> p.Hello:
    return p.Hello(1, store, site, SCHEMA, 0, epoch, token, key)


async def test_a_bound_site_id_refuses_other_keys_and_leaks_no_position(
    relay: RelayProcess,
) -> None:
    token = relay.token("s")
    victim, key = os.urandom(16), os.urandom(32)
    async with ws_client(relay.url, compression=None) as ws:
        v = Raw(ws)
        await v.send(_hello("s", victim, token, key))
        welcome = await v.recv()
        assert isinstance(welcome, p.Welcome)
        row = Change("todos", pack_pk(["1"]), "title", "offline", 1, 5, victim, 1, 0)
        await v.send(p.Push(1, 0, 5, [row]))
        ack = await v.until(p.Ack)
        assert isinstance(ack, p.Ack) and ack.upto == 5
    for forged_key in (None, os.urandom(32)):
        async with ws_client(relay.url, compression=None) as ws:
            m = Raw(ws)
            await m.send(_hello("s", victim, token, forged_key, welcome.epoch))
            msg = await m.recv()
            assert isinstance(msg, p.Error) and msg.code == "site_forbidden", msg
    # The device itself still gets its own position back.
    async with ws_client(relay.url, compression=None) as ws:
        v = Raw(ws)
        await v.send(_hello("s", victim, token, key, welcome.epoch))
        again = await v.recv()
        assert isinstance(again, p.Welcome) and again.acked == 5


async def test_a_write_forged_under_another_sites_id_reaches_that_site(
    relay: RelayProcess,
) -> None:
    token = relay.token("s")
    victim, vkey = os.urandom(16), os.urandom(32)
    mallory, mkey = os.urandom(16), os.urandom(32)
    forged = Change("todos", pack_pk(["r1"]), "title", "FORGED", 7, 1, victim, 1, 0)
    async with ws_client(relay.url, compression=None) as vws:
        v = Raw(vws)
        await v.send(_hello("s", victim, token, vkey))
        assert isinstance(await v.recv(), p.Welcome)
        async with ws_client(relay.url, compression=None) as mws:
            m = Raw(mws)
            await m.send(_hello("s", mallory, token, mkey))
            assert isinstance(await m.recv(), p.Welcome)
            await m.send(p.Push(1, 0, 1, [forged]))
            assert isinstance(await m.until(p.Ack), p.Ack)
        # The claimed author receives it (so it converges with everyone else) ...
        got = await v.until(p.Changes)
        assert isinstance(got, p.Changes) and got.changes == [forged]
    # ... also from disk (catch-up), not only from the in-memory ring.
    async with ws_client(relay.url, compression=None) as vws:
        v = Raw(vws)
        await v.send(_hello("s", victim, token, vkey))
        assert isinstance(await v.recv(), p.Welcome)
        got = await v.until(p.Changes)
        assert isinstance(got, p.Changes) and got.changes == [forged]
    # The pushing connection's own site does not get its write echoed back.
    async with ws_client(relay.url, compression=None) as mws:
        m = Raw(mws)
        await m.send(_hello("s", mallory, token, mkey))
        welcome = await m.recv()
        assert isinstance(welcome, p.Welcome) and welcome.head == 1
        await m.send(p.Ping(1))
        pong = await m.until(p.Pong)
        assert isinstance(pong, p.Pong)  # nothing (no changes frame) came before the pong


# ---------------------------------------------------------------------------- real devices

OPTS: dict[str, Any] = {"backoff_initial": 0.05, "backoff_max": 0.3}


async def test_a_forged_ack_cannot_drop_a_devices_offline_writes(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Review H4 B: an attacker sent an empty push under the victim's site id with upto =
    head + 1; the victim then believed its offline writes acknowledged and never pushed them."""
    token = relay.token("s")
    victim, other = open_db(tmp_path / "v.db"), open_db(tmp_path / "o.db")
    victim.conn.execute("INSERT INTO todos (id, title) VALUES ('r0', 'online')")
    with anyio.fail_after(30):
        async with Peer(victim, relay.url, store="s", token=token, **OPTS) as pv:
            await pv.wait_synced()
            epoch = pv.epoch
    for i in range(1, 4):  # offline writes
        victim.conn.execute("INSERT INTO todos (id, title) VALUES (?, ?)", (f"r{i}", "offline"))
    # The attacker learned the victim's site id (every broadcast carries it).
    site = victim.site_id
    async with ws_client(relay.url, compression=None) as ws:
        m = Raw(ws)
        await m.send(p.Hello(1, "s", site, SCHEMA, 0, epoch, token, None))
        msg = await m.recv()
        assert isinstance(msg, p.Error) and msg.code == "site_forbidden"
    with anyio.fail_after(30):
        async with Peer(victim, relay.url, store="s", token=token, **OPTS) as pv:
            await pv.wait_synced()
        async with Peer(other, relay.url, store="s", token=token, **OPTS) as po:
            await po.wait_synced()
    assert sorted(r[0] for r in rows(other)) == ["r0", "r1", "r2", "r3"]


async def test_devices_converge_on_a_write_forged_under_another_devices_site(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """Review H4 A: the victim never received a write forged under its site id and the two
    devices disagreed for good, both reporting synced."""
    token = relay.token("s")
    victim, other = open_db(tmp_path / "v.db"), open_db(tmp_path / "o.db")
    victim.conn.execute("INSERT INTO todos (id, title) VALUES ('r1', 'written by victim')")
    with anyio.fail_after(30):
        async with (
            Peer(victim, relay.url, store="s", token=token, **OPTS) as pv,
            Peer(other, relay.url, store="s", token=token, **OPTS) as po,
        ):
            await pv.wait_synced()
            await po.wait_synced()
            forged = Change("todos", pack_pk(["r1"]), "title", "FORGED", 9, 1, victim.site_id, 1, 0)
            async with ws_client(relay.url, compression=None) as ws:
                m = Raw(ws)
                await m.send(_hello("s", os.urandom(16), token, os.urandom(32), pv.epoch))
                assert isinstance(await m.recv(), p.Welcome)
                await m.send(p.Push(1, 0, 1, [forged]))
                assert isinstance(await m.until(p.Ack), p.Ack)
            await pv.wait_synced()
            await po.wait_synced()
    assert rows(victim) == rows(other)
    assert rows(victim)[0][1] == "FORGED"


async def test_a_device_whose_site_id_was_claimed_first_continues_under_a_new_one(
    relay: RelayProcess, tmp_path: Path
) -> None:
    token = relay.token("s")
    dev, other = open_db(tmp_path / "d.db"), open_db(tmp_path / "o.db")
    dev.conn.execute("INSERT INTO todos (id, title) VALUES ('mine', 'x')")
    squatted = dev.site_id
    async with ws_client(relay.url, compression=None) as ws:
        m = Raw(ws)
        await m.send(_hello("s", squatted, token, os.urandom(32)))
        assert isinstance(await m.recv(), p.Welcome)
    with anyio.fail_after(30):
        async with Peer(dev, relay.url, store="s", token=token, **OPTS) as pd:
            await pd.wait_synced()
            assert pd.site_id != squatted
        async with Peer(other, relay.url, store="s", token=token, **OPTS) as po:
            await po.wait_synced()
    assert [r[0] for r in rows(other)] == ["mine"]
