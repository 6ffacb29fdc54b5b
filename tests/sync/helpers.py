"""Shared helpers of the sync tests: app databases, state snapshots, bounded waiting."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import sniffio

import crsync
from crsync import protocol as p
from crsync.peer import Peer

TODOS = (
    "CREATE TABLE IF NOT EXISTS todos "
    "(id TEXT PRIMARY KEY NOT NULL, title TEXT, done INTEGER DEFAULT 0, data BLOB)"
)
NOTES = (
    "CREATE TABLE IF NOT EXISTS notes (a INTEGER NOT NULL, b TEXT NOT NULL, body TEXT, "
    "PRIMARY KEY (a, b))"
)


def open_db(path: Path, *ddl: str) -> crsync.Database:
    """A crsync database with the given tables (default: todos and notes), all tracked."""
    db = crsync.connect(path)
    for stmt in ddl or (TODOS, NOTES):
        db.conn.execute(stmt)
    for (name,) in db.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'crsync%' "
        "AND name NOT LIKE '%__crsync' AND name NOT LIKE 'sqlite%'"
    ).fetchall():
        db.track(name)
    return db


def rows(db: crsync.Database, table: str = "todos") -> list[tuple[object, ...]]:
    """Every row of a table in a stable order."""
    return db.conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()


def snapshot(db: crsync.Database) -> dict[str, list[tuple[object, ...]]]:
    """The data of every tracked table."""
    return {t: rows(db, t) for t in sorted(db.tracked_tables())}


async def eventually(pred: Callable[[], bool], what: str, limit: float = 15.0) -> None:
    """Wait until ``pred()`` holds, polling (for effects with no event to wait on, such as a
    write by another process being noticed); fails after ``limit`` seconds."""
    with anyio.move_on_after(limit):
        while not pred():  # noqa: ASYNC110 - polls an effect that has no event to wait on
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"timed out after {limit}s waiting for {what}")


@asynccontextmanager
async def ws_server(handler: Callable[[Any], Awaitable[None]]) -> AsyncIterator[int]:
    """A WebSocket server on 127.0.0.1 in the test's own event loop (``websockets``' asyncio or
    trio server, whichever runs); yields its port. A handler that waits for the client to
    leave uses ``await ws.wait_closed()`` (both servers close connections when they stop)."""
    if sniffio.current_async_library() == "trio":
        from websockets.trio.server import serve as trio_serve

        async with anyio.create_task_group() as tg:
            server = await tg.start(functools.partial(trio_serve, handler, 0, host="127.0.0.1"))
            yield server.listeners[0].socket.getsockname()[1]
            tg.cancel_scope.cancel()
    else:
        from websockets.asyncio.server import serve as asyncio_serve

        async with asyncio_serve(handler, "127.0.0.1", 0) as server:
            yield next(iter(server.sockets)).getsockname()[1]


@asynccontextmanager
async def ws_client(url: str, local_host: str | None = None, **options: Any) -> AsyncIterator[Any]:
    """A raw WebSocket client connection (a hostile or hand-driven client) in the test's own
    event loop: ``websockets``' asyncio or trio client, whichever runs. Options are
    ``connect()``'s (``proxy=None``, ``max_size``...); ``local_host`` is the address to
    connect from (e.g. ``127.0.0.2``)."""
    if sniffio.current_async_library() == "trio":
        from websockets.trio.client import connect as trio_connect

        if local_host is not None:
            options["local_address"] = local_host
        async with trio_connect(url, **options) as ws:
            yield ws
    else:
        from websockets.asyncio.client import connect as asyncio_connect

        if local_host is not None:
            options["local_addr"] = (local_host, 0)
        async with asyncio_connect(url, **options) as ws:
            yield ws


async def peer_messages(ws: Any) -> AsyncIterator[p.Message]:
    """What a peer sends to a fake relay (``ws_server`` handler side), decoded, until the
    connection ends or sends something that does not decode."""
    while True:
        try:
            msg = p.decode(await ws.recv())
        except Exception:
            return
        yield msg


async def ws_close(ws: Any, code: int, reason: str) -> None:
    """Close a connection of :func:`ws_server` or :func:`ws_client` with a close code and
    reason."""
    close = getattr(ws, "aclose", None) or ws.close  # trio: aclose(); asyncio: close()
    await close(code, reason)


FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}  # quick reconnects for tests


@asynccontextmanager
async def peers_at(
    url: str, store: str, *dbs: crsync.Database, token: str | None = None, **kw: Any
) -> AsyncIterator[list[Peer]]:
    """One running Peer per database on ``store`` of the relay at ``url`` (FAST backoff unless
    ``kw`` says otherwise)."""
    opts = {**FAST, **kw}
    async with AsyncExitStack() as stack:
        out = []
        for db in dbs:
            out.append(
                await stack.enter_async_context(Peer(db, url, store=store, token=token, **opts))
            )
        yield out


async def converge(ps: Sequence[Peer]) -> None:
    """Two rounds of wait_synced: everybody pushed, then everybody pulled everything."""
    for _ in range(2):
        for peer in ps:
            await peer.wait_synced()


async def assert_resumes_without_resending(
    connect: Callable[[], AbstractAsyncContextManager[list[Peer]]],
    edit: Callable[[], object],
) -> None:
    """After a full sync, reconnecting the peers of ``connect()`` (first one the writer) sends
    nothing again in either direction (same epoch and positions; one connect each); then
    ``edit()``, one changed cell on the writer, travels as exactly one change, one way."""
    async with connect() as ps:
        await converge(ps)
        for p in ps:
            assert p.stats.received_changes == 0
            assert p.stats.pushed_changes == 0
            assert p.stats.connects == 1
    edit()
    async with connect() as (writer, reader):
        await converge([writer, reader])
        assert writer.stats.pushed_changes == 1
        assert writer.stats.received_changes == 0
        assert reader.stats.received_changes == 1
