"""A catch-up unit dropped in the middle resumes where it stopped (docs/protocol.md rule 10).

A fake relay (a WebSocket server in the test's event loop) sends one relay version in parts
and drops the connection after some of them; the device keeps those parts durably, names the
last one in its next hello, and the relay sends only the rest. A relay that does not resume
sends the unit again; the device drops what it staged and merges the whole unit once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from sync.helpers import FAST, eventually, open_db, peer_messages, rows, ws_close, ws_server

import crsync
from crsync import Change, positions
from crsync import protocol as p
from crsync.peer import Peer

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROWS = 40
PART = 12  # cells per part (the unit of version 1 has 3 * ROWS cells)


def _source(tmp_path: Path) -> list[Change]:
    src = open_db(tmp_path / "src.db")
    src.conn.executemany(
        "INSERT INTO todos (id, title, done) VALUES (?, ?, ?)",
        [(f"k{i:03d}", f"title {i}", i % 2) for i in range(ROWS)],
    )
    # One relay version, in (table, pk, cid) order: how a relay reads a version in parts.
    out = sorted(src.changes(), key=lambda c: (c.table, c.pk, c.cid))
    src.close()
    return out


def _parts(changes: list[Change]) -> list[list[Change]]:
    return [changes[i : i + PART] for i in range(0, len(changes), PART)]


class FakeRelay:
    """Serves relay version 1 (``changes``) in parts; the first connection is dropped after
    ``drop_after`` parts. ``resume``: answer a hello naming the staged unit with
    ``resumed: true`` and only the parts after it."""

    def __init__(self, changes: list[Change], drop_after: int, resume: bool) -> None:
        self.parts = _parts(changes)
        self.drop_after = drop_after
        self.resume = resume
        self.hellos: list[p.Hello] = []
        self.sent: list[list[Change]] = []  # parts sent, per connection
        self.received: list[int] = []

    async def handler(self, ws: Any) -> None:
        hello = p.decode(await ws.recv())
        assert isinstance(hello, p.Hello)
        self.hellos.append(hello)
        first = len(self.hellos) == 1
        start = 0
        resumed = False
        if hello.resume is not None and self.resume:
            last = (hello.resume.table, hello.resume.pk, hello.resume.cid)
            keys = [(c.table, c.pk, c.cid) for part in self.parts for c in part]
            start = keys.index(last) + 1
            resumed = True
        flat = [c for part in self.parts for c in part][start:]
        parts = _parts(flat)
        await ws.send(p.encode(p.Welcome(1, "E", 1, 0, remaining=len(flat), resumed=resumed)))
        sent: list[Change] = []
        self.sent.append(sent)
        for i, part in enumerate(parts):
            if first and i == self.drop_after:
                await ws_close(ws, 1011, "relay killed")
                return
            await ws.send(p.encode(p.Changes(0, 1, part, more=i < len(parts) - 1)))
            sent.extend(part)
        async for msg in peer_messages(ws):
            if isinstance(msg, p.Received):
                self.received.append(msg.upto)
            elif isinstance(msg, p.Ping):
                await ws.send(p.encode(p.Pong(msg.id, 1)))


@pytest.mark.parametrize("resume", [True, False], ids=["resumed", "sent-again"])
async def test_a_catch_up_unit_dropped_mid_way_resumes_without_receiving_the_parts_again(
    tmp_path: Path, resume: bool
) -> None:
    changes = _source(tmp_path)
    relay = FakeRelay(changes, drop_after=2, resume=resume)
    db = open_db(tmp_path / "d.db")
    progress: list[tuple[int, int]] = []
    async with ws_server(relay.handler) as port:
        url = f"ws://127.0.0.1:{port}"
        with anyio.fail_after(20):
            async with Peer(
                db,
                url,
                store="s",
                on_progress=lambda d, t: progress.append((d, t)),
                **FAST,  # type: ignore[arg-type]
            ) as peer:
                await eventually(lambda: relay.received == [1], "the unit merged")
                assert peer.pull_upto == 1
    staged = 2 * PART
    first, second = relay.hellos[0], relay.hellos[1]
    assert first.resume is None
    # The second hello names the last change staged from the dropped connection.
    last = changes[staged - 1]
    assert second.resume == p.Resume(1, last.table, last.pk, last.cid)
    assert relay.sent[0] == changes[:staged]
    if resume:
        # Only the rest was sent again, and the unit merged whole.
        assert relay.sent[1] == changes[staged:]
        assert progress[-1] == (len(changes), len(changes))
    else:
        assert relay.sent[1] == changes
    assert len(rows(db)) == ROWS
    assert rows(db)[5] == ("k005", "title 5", 1, None)
    assert positions.staged(db, "relay:s") is None
    db.close()
    again = crsync.connect(tmp_path / "d.db")
    assert positions.load(again, "relay:s") == ("E", 0, 1)
    again.close()
