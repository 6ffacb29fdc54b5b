"""An in-process relay (same trio run as the test) with a reactor, and device helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio
from crsync_relay.hub import Hub
from crsync_relay.server import RelayConfig, run_relay

import crsync
from crsync.peer import Peer

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}
REQUESTS = (
    "CREATE TABLE IF NOT EXISTS requests (id TEXT PRIMARY KEY NOT NULL, question TEXT, answer TEXT)"
)


@contextlib.asynccontextmanager
async def relay(
    data_dir: Path, reactor: Callable[..., Any] | None, stores: str | None = None, port: int = 0
) -> AsyncIterator[tuple[str, Hub]]:
    """Run a --dev relay in this trio run; yield its URL and hub; stop it on exit."""
    config = RelayConfig(
        data_dir=data_dir, port=port, dev=True, reactor=reactor, reactor_stores=stores
    )
    async with trio.open_nursery() as nursery:
        server, hub = await nursery.start(
            lambda task_status: run_relay(config, task_status=task_status, handle_signals=False)
        )
        port = sorted({lst.socket.getsockname()[1] for lst in server.listeners})[0]
        yield f"ws://127.0.0.1:{port}", hub
        nursery.cancel_scope.cancel()


def device(path: Path, *ddl: str) -> crsync.Database:
    db = crsync.connect(path)
    for stmt in ddl or (REQUESTS,):
        db.conn.execute(stmt)
    for (name,) in db.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'crsync%' "
        "AND name NOT LIKE '%__crsync' AND name NOT LIKE 'sqlite%'"
    ).fetchall():
        db.track(name)
    return db


def peer(db: crsync.Database, url: str, store: str) -> Peer:
    return Peer(db, url, store=store, **FAST)  # type: ignore[arg-type]


async def answer_questions(batch: Any) -> None:
    """The reference reactor: answers every unanswered request with its question reversed."""
    for row in batch.rows():
        if row.table != "requests" or row.deleted:
            continue
        cur = await batch.row("requests", row.pk)
        if cur is None or not cur.alive or cur.values.get("answer") is not None:
            continue  # idempotent: already answered (by an earlier delivery)
        question = cur.values.get("question")
        if question is not None:
            await batch.set("requests", row.pk, {"answer": str(question)[::-1]})
