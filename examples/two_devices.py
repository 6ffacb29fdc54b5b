"""The main job: a relay on loopback and two devices that edit offline, reconnect and converge.

Run it with ``python examples/two_devices.py`` (add ``--keep DIR`` to keep the files). It
starts a real ``crsync-relay`` process with a freshly generated secret, mints a token for one
store, and drives two device databases through a realistic day.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
from _demo import demo_relay, run_in_workdir

import crsync
from crsync.peer import Peer

SCHEMA = """
CREATE TABLE IF NOT EXISTS todos (
    id TEXT PRIMARY KEY NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    done INTEGER NOT NULL DEFAULT 0,
    due TEXT
)
"""


def say(msg: str) -> None:
    print(msg, flush=True)


def open_device(path: Path) -> crsync.Database:
    db = crsync.connect(path)
    db.conn.execute(SCHEMA)
    db.track("todos")
    return db


def show(name: str, db: crsync.Database) -> list[tuple[object, ...]]:
    rows = db.conn.execute("SELECT id, title, done, due FROM todos ORDER BY id").fetchall()
    say(f"  {name}: {rows}")
    return rows


async def sync_once(db: crsync.Database, url: str, token: str, name: str) -> None:
    async with Peer(db, url, store="family", token=token) as peer:
        with trio.fail_after(30):
            await peer.wait_synced()
        say(
            f"  {name} synced: pushed {peer.stats.pushed_changes}, "
            f"received {peer.stats.received_changes} changes"
        )


async def run(workdir: Path) -> bool:
    laptop = open_device(workdir / "laptop.db")
    phone = open_device(workdir / "phone.db")

    with demo_relay(workdir, "family", "two_devices") as relay:
        url, token = relay.url, relay.token
        say(f"relay listening at {url}; store 'family'")
        say("1. the laptop writes two todos and syncs")
        laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('t1', 'buy milk')")
        laptop.conn.execute(
            "INSERT INTO todos (id, title, due) VALUES ('t2', 'call mum', '2026-11-23T18:00:00Z')"
        )
        await sync_once(laptop, url, token, "laptop")
        say("2. the phone syncs and gets them")
        await sync_once(phone, url, token, "phone")
        show("phone", phone)

        say("3. both go offline and edit the same data")
        laptop.conn.execute("UPDATE todos SET done = 1 WHERE id = 't1'")
        laptop.conn.execute("INSERT INTO todos (id, title) VALUES ('t3', 'water plants')")
        phone.conn.execute("UPDATE todos SET title = 'buy oat milk' WHERE id = 't1'")
        phone.conn.execute("DELETE FROM todos WHERE id = 't2'")
        show("laptop (offline)", laptop)
        show("phone (offline)", phone)

        say("4. both reconnect at the same time, live")
        async with (
            Peer(laptop, url, store="family", token=token) as p1,
            Peer(phone, url, store="family", token=token) as p2,
        ):
            with trio.fail_after(30):
                await p1.wait_synced()
                await p2.wait_synced()
                await p1.wait_synced()
            say("5. a live edit on the phone reaches the laptop")
            phone.conn.execute("UPDATE todos SET done = 1 WHERE id = 't3'")
            with trio.fail_after(30):
                await p2.wait_synced()
                await p1.wait_synced()
        a = show("laptop", laptop)
        b = show("phone", phone)
    converged = a == b
    say("converged: " + ("yes" if converged else "NO"))
    return converged


def main() -> int:
    return run_in_workdir(__doc__ or "", "crsync-demo-", lambda workdir: trio.run(run, workdir))


if __name__ == "__main__":
    sys.exit(main())
