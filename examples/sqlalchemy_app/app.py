"""SQLAlchemy + Alembic with crsync: two devices, an app update rolling out, live sync.

Run it with ``python examples/sqlalchemy_app/app.py`` (``--keep DIR`` keeps the files). It
starts a real ``crsync-relay`` process, migrates two device databases with Alembic (the
migrations' ``env.py`` uses ``crsync.contrib.alembic``), writes through ORM sessions and syncs
with a ``crsync.Peer`` per device on ``crsync.contrib.sqlalchemy.connect(engine)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sqlalchemy as sa
import trio
from alembic import command
from alembic.config import Config
from sqlalchemy.orm import Session

import crsync
from crsync.contrib import sqlalchemy as crsync_sa

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # the app's models beside it; examples/_demo.py
from _demo import demo_relay, run_in_workdir  # noqa: E402
from models import Note  # noqa: E402


def say(msg: str) -> None:
    print(msg, flush=True)


def upgrade(path: Path, revision: str) -> None:
    cfg = Config(str(HERE / "alembic.ini"))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{path}")
    command.upgrade(cfg, revision)


def show(name: str, engine: sa.Engine) -> list[tuple[object, ...]]:
    cols = [c["name"] for c in sa.inspect(engine).get_columns("notes")]
    with engine.connect() as c:
        rows = [tuple(r) for r in c.exec_driver_sql(f"SELECT {', '.join(cols)} FROM notes")]
    rows.sort(key=lambda r: str(r[1]))
    say(f"  {name} {tuple(cols[1:])}: {[r[1:] for r in rows]}")
    return rows


async def synced(*peers: crsync.Peer) -> None:
    with trio.fail_after(30):
        for _ in range(2):
            for p in peers:
                p.notify()
                await p.wait_synced()


async def run(workdir: Path) -> bool:
    paths = {"laptop": workdir / "laptop.db", "phone": workdir / "phone.db"}
    for p in paths.values():
        p.unlink(missing_ok=True)
        upgrade(p, "0001")  # both devices start on the first app version
    engines = {n: sa.create_engine(f"sqlite:///{p}") for n, p in paths.items()}
    laptop, phone = engines["laptop"], engines["phone"]

    with demo_relay(workdir, "notes", "sqlalchemy_app") as relay:
        token = relay.token
        dbs = [crsync_sa.connect(e) for e in engines.values()]
        async with (
            crsync.Peer(dbs[0], relay.url, store="notes", token=token) as p1,
            crsync.Peer(dbs[1], relay.url, store="notes", token=token) as p2,
        ):
            say("1. the laptop writes a note; the phone receives it")
            with laptop.begin() as c:  # version 1 has no `due` yet: plain Core insert
                c.execute(sa.text("INSERT INTO notes (id, title) VALUES (:i, 'buy milk')"),
                          {"i": crsync.new_id()})
            await synced(p1, p2)
            show("phone", phone)

            say("2. the laptop updates the app: alembic upgrade head (a batch rebuild)")
            await trio.to_thread.run_sync(upgrade, paths["laptop"], "head")
            with Session(laptop) as s, s.begin():
                s.add(Note(title="call mum", due="friday"))
                for note in s.scalars(sa.select(Note).where(Note.title == "buy milk")):
                    note.due = "today"
            say("3. the phone, still on version 1, ticks 'buy milk' off")
            with phone.begin() as c:
                c.execute(sa.text("UPDATE notes SET done = 1 WHERE title = 'buy milk'"))
            await synced(p1, p2)
            show("laptop", laptop)
            show("phone (v1)", phone)
            say(f"  phone keeps {dbs[1].pending_count()} change(s) for columns it lacks")

            say("4. the phone updates too and gets the due dates")
            await trio.to_thread.run_sync(upgrade, paths["phone"], "head")
            await synced(p1, p2)
            a, b = show("laptop", laptop), show("phone", phone)
        for db in dbs:
            db.close()
    for e in engines.values():
        e.dispose()
    converged = a == b
    say("converged: " + ("yes" if converged else "NO"))
    return converged


def main() -> int:
    return run_in_workdir(
        __doc__ or "", "crsync-sqlalchemy-", lambda workdir: trio.run(run, workdir)
    )


if __name__ == "__main__":
    sys.exit(main())
