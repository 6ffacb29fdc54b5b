"""Fixtures of the ORM and migration-tool integration tests: a real relay process (the sync
tests' RelayProcess) and Peers on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest
from sync.conftest import RelayProcess, relay_processes

import crsync
from crsync.peer import Peer

FAST = {"backoff_initial": 0.05, "backoff_max": 0.5}


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay process that requires tokens."""
    with relay_processes(tmp_path) as make:
        yield make()


@contextlib.asynccontextmanager
async def peers(
    relay: RelayProcess, store: str, *dbs: crsync.Database
) -> AsyncIterator[list[Peer]]:
    """One Peer per database on a store of the relay."""
    token = relay.token(store)
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                Peer(db, relay.url, store=store, token=token, **FAST)  # type: ignore[arg-type]
            )
            for db in dbs
        ]


async def converge(ps: Sequence[Peer]) -> None:
    """Two rounds of wait_synced: everybody pushed, then everybody pulled everything."""
    for _ in range(2):
        for p in ps:
            await p.wait_synced()
