"""crsync in an asyncio program: two devices sync through a relay while one shows a live list.

Run it with ``python examples/asyncio_sync.py`` (add ``--keep DIR`` to keep the files). It
starts a real ``crsync-relay`` process on loopback, then, under plain ``asyncio.run``:

1. the laptop writes todos offline; its ``Peer`` pushes them when it starts;
2. the phone's ``Peer`` merges them, and the phone's live list (``db.watch()``) and change
   callback (``db.on_change()``) see each merge as it lands;
3. an edit on the phone travels back to the laptop while both stay connected;
4. a ``Peer`` cancelled by ``asyncio.timeout`` (a relay that never answers) lets go of the
   file at once, and the next ``Peer`` on the file syncs.

Nothing here is trio: ``Peer``, ``db.watch()``, ``db.changes_feed()`` and ``db.on_change()``
run on whichever event loop runs them (see ``two_devices.py`` for the same job under trio).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
from pathlib import Path

from _demo import demo_relay, run_in_workdir

import crsync
from crsync.live import RowChange
from crsync.peer import Peer, PeerState

SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0
)
"""


say = functools.partial(print, flush=True)


def open_device(path: Path) -> crsync.Database:
    """A device's database with the todos table, replicated."""
    db = crsync.connect(path)
    db.conn.execute(SCHEMA)
    db.track("todos")
    return db


def rows(db: crsync.Database) -> list[tuple[object, ...]]:
    return db.conn.execute("SELECT id, title, done FROM todos ORDER BY id").fetchall()


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run(workdir: Path) -> bool:
    laptop = open_device(workdir / "laptop.db")
    phone = open_device(workdir / "phone.db")

    say("1. the laptop writes two todos while offline")
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'buy milk')")
    laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('t2', 'call mum')")

    merged: list[RowChange] = []

    def on_phone_change(changes: list[RowChange]) -> None:  # runs in this event loop
        merged.extend(c for c in changes if not c.local)

    with demo_relay(workdir, "family", "asyncio_sync") as relay:
        token = relay.token
        say(f"relay listening at {relay.url}; store 'family'")
        handle = await phone.on_change("todos", on_phone_change)
        async with (
            Peer(laptop, relay.url, store="family", token=token) as p1,
            Peer(phone, relay.url, store="family", token=token) as p2,
            phone.watch("SELECT title FROM todos WHERE done = 0 ORDER BY id") as live,
        ):
            say("2. the phone's live list follows the merges")
            async with asyncio.timeout(30):
                async for titles in live:
                    say(f"  phone shows: {[t for (t,) in titles]}")
                    if len(titles) == 2:
                        break
                say("3. the phone ticks one off; the laptop gets it")
                phone.conn.execute("UPDATE todos SET done = 1 WHERE id = 't1'")
                await p2.wait_synced()
                await p1.wait_synced()
                async for titles in live:
                    say(f"  phone shows: {[t for (t,) in titles]}")
                    if len(titles) == 1:
                        break
        handle.close()
        say(f"  the phone's change callback saw {len(merged)} merged row changes")

    say("4. a peer cancelled by asyncio.timeout lets go of the file")
    silent = f"ws://127.0.0.1:{unused_port()}"  # nothing listens: the peer keeps retrying
    try:
        async with asyncio.timeout(0.5):
            async with Peer(laptop, silent, store="family", token=token) as stuck:
                await stuck.wait_synced()
    except TimeoutError:
        say(f"  timed out as expected; the peer is {stuck.state.value}")
    async with Peer(laptop, silent, store="family", token=token) as again:
        state = await again.wait_state(PeerState.OFFLINE, PeerState.STANDBY)
        say(f"  the next peer on the file is {state.value}, not standby: the lock was released")

    final = {name: rows(db) for name, db in (("laptop", laptop), ("phone", phone))}
    for name, result in final.items():
        say(f"  {name}: {result}")
    same = final["laptop"] == final["phone"]
    say("converged: " + ("yes" if same and state is PeerState.OFFLINE and merged else "NO"))
    return same


def main() -> int:
    return run_in_workdir(
        __doc__.split("\n\n")[0], "crsync-aio-", lambda workdir: asyncio.run(run(workdir))
    )


if __name__ == "__main__":
    sys.exit(main())
