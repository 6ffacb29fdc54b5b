"""The trio nursery helper of the relay and the CLI (the peer uses :mod:`crsync._async_util`,
its anyio counterpart)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from ._task_errors import Rank, default_rank, raise_first_error


@contextlib.asynccontextmanager
async def open_nursery(rank: Rank = default_rank) -> AsyncIterator[trio.Nursery]:
    """A nursery whose errors surface as the single most telling exception (see
    :func:`crsync._task_errors.first_error`), not a group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise_first_error(group, rank)
