"""A reactor on the relay answers requests that devices write; two devices see answers live.

Run it with ``python examples/reactor_requests.py``. It starts a ``crsync-relay serve --dev``
process with ``--reactor examples/reactor_requests.py:react`` (this file is also the reactor
module), then two devices: the *laptop* asks questions by inserting rows into ``requests``;
the relay's reactor fills in ``answer``; the *phone* watches the table with ``db.watch`` and
prints every answer as it arrives.
"""

from __future__ import annotations

import argparse
import operator
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import trio

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY NOT NULL, "
    "question TEXT NOT NULL DEFAULT '', answer TEXT)"
)
QUESTIONS = {"q1": "2 + 2", "q2": "6 * 7", "q3": "10 - 3"}
OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul}


# ---------------------------------------------------------------- the reactor (runs in the relay)


async def react(batch: Any) -> None:
    """Answer every unanswered request of the batch.

    Idempotent: a batch may be delivered again (after a failure or a relay restart), so the
    handler reads the row as the store holds it and skips requests that already have an answer.
    """
    for row in batch.rows():
        if row.table != "requests" or row.deleted:
            continue
        current = await batch.row("requests", row.pk)
        if current is None or not current.alive or current.values.get("answer") is not None:
            continue
        question = str(current.values.get("question") or "")
        try:  # a deliberately tiny calculator: "<int> <op> <int>"
            a, op, b = question.split()
            answer = str(OPS[op](int(a), int(b)))
        except (ValueError, KeyError):
            answer = "cannot answer"
        await batch.set("requests", row.pk, {"answer": answer})


# ---------------------------------------------------------------- the devices


def say(msg: str) -> None:
    print(msg, flush=True)


@contextmanager
def relay_process(data_dir: Path) -> Iterator[str]:
    """``crsync-relay serve --dev`` with this file as its reactor; yield its URL."""
    from crsync_relay.process import relay_process as run

    with run(data_dir, args=["--reactor", f"{Path(__file__).resolve()}:react"]) as relay:
        yield relay.url


async def run(workdir: Path, url: str) -> None:
    import crsync
    from crsync.peer import Peer

    laptop = crsync.connect(workdir / "laptop.db")
    phone = crsync.connect(workdir / "phone.db")
    for db in (laptop, phone):
        db.conn.execute(SCHEMA)
        db.track("requests")
    with trio.fail_after(60):
        async with (
            Peer(laptop, url, store="calc") as p1,
            Peer(phone, url, store="calc") as p2,
            phone.watch("SELECT id, question, answer FROM requests ORDER BY id") as live,
        ):
            for rid, q in QUESTIONS.items():
                laptop.conn.execute("INSERT INTO requests (id, question) VALUES (?, ?)", (rid, q))
                say(f"laptop asks {rid}: {q}")
            shown: set[str] = set()
            async for rows in live:
                for rid, q, answer in rows:
                    if answer is not None and rid not in shown:
                        shown.add(rid)
                        say(f"phone sees {rid}: {q} = {answer}")
                if len(shown) == len(QUESTIONS):
                    break
            await p2.wait_synced()
            await p1.wait_synced()
        final = laptop.conn.execute("SELECT id, answer FROM requests ORDER BY id").fetchall()
        say(f"laptop has {final}")
        say("all answered: " + ("yes" if all(a is not None for _, a in final) else "no"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--keep", help="directory to keep the files in")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with relay_process(workdir / "relay") as url:
            trio.run(run, workdir, url)


if __name__ == "__main__":
    main()
