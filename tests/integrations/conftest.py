"""Fixtures of the ORM and migration-tool integration tests: a real relay process (the sync
tests' RelayProcess) and Peers on it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sync.conftest import RelayProcess, relay_processes
from sync.helpers import peers_at

import crsync
from crsync.peer import Peer


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
    async with peers_at(relay.url, store, *dbs, token=relay.token(store)) as out:
        yield out
