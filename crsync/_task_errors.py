"""Which error of a group of tasks tells the most (no I/O, no event loop needed).

Shared by the trio nursery helper of the relay and the CLI (:mod:`crsync._trio_util`) and the
anyio task group of the peer (:mod:`crsync._async_util`).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import NoReturn, TypeVar

Rank = Callable[[BaseException], int]
G = TypeVar("G")


def is_cancelled(exc: BaseException) -> bool:
    """True if ``exc`` is an event loop's cancellation (``trio.Cancelled`` or
    ``asyncio.CancelledError``)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    trio = sys.modules.get("trio")  # (imported by whoever runs trio)
    return trio is not None and isinstance(exc, trio.Cancelled)


def default_rank(e: BaseException) -> int:
    """Cancellation tells least, then ordinary errors, then KeyboardInterrupt/SystemExit."""
    if is_cancelled(e):
        return 0
    if isinstance(e, Exception):
        return 1
    return 2


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """Every non-group exception of a (nested) group, depth first, in the group's order."""
    out: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            out.append(e)

    walk(group)
    return out


def first_error(
    group: BaseExceptionGroup[BaseException], rank: Rank = default_rank
) -> BaseException:
    """The most telling leaf of an exception group: the highest ``rank``.

    Ties keep the leaf that comes first in the group, so the outcome depends on which kinds of
    errors happened, not on which task failed first (a fatal error beats a retryable one, which
    beats a cancellation, whatever the order the tasks failed in).
    """
    found = leaves(group)
    best = found[0]
    best_rank = rank(best)
    for e in found[1:]:
        r = rank(e)
        if r > best_rank:
            best, best_rank = e, r
    return best


def raise_first_error(group: BaseExceptionGroup[BaseException], rank: Rank) -> NoReturn:
    """Raise the group's :func:`first_error` in its place, its own chain intact."""
    leaf = first_error(group, rank)
    # Re-raising sets the leaf's __context__ (to the group): keep its own chain intact, so
    # what caused it (e.g. the sqlite3 error behind a CrsyncError) can still be found.
    cause, context, suppress = leaf.__cause__, leaf.__context__, leaf.__suppress_context__
    try:
        raise leaf
    finally:
        leaf.__cause__, leaf.__context__ = cause, context
        leaf.__suppress_context__ = suppress


@contextlib.asynccontextmanager
async def flattened(group: AbstractAsyncContextManager[G], rank: Rank) -> AsyncIterator[G]:
    """Enter a nursery or task group whose errors surface as its single most telling
    exception (:func:`first_error`), not a group."""
    try:
        async with group as entered:
            yield entered
    except BaseExceptionGroup as errors:
        raise_first_error(errors, rank)
