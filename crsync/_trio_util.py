"""The trio nursery helper of the relay and the CLI (the peer uses :mod:`crsync._async_util`,
its anyio counterpart)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import trio

from ._task_errors import Rank, default_rank, flattened


def open_nursery(rank: Rank = default_rank) -> AbstractAsyncContextManager[trio.Nursery]:
    """A nursery whose errors surface as the single most telling exception (see
    :func:`crsync._task_errors.first_error`), not a group."""
    return flattened(trio.open_nursery(), rank)
