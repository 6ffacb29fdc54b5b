"""Small trio helpers shared by the peer and the relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import trio

Rank = Callable[[BaseException], int]


def default_rank(e: BaseException) -> int:
    """Cancelled tells least, then ordinary errors, then KeyboardInterrupt/SystemExit."""
    if isinstance(e, trio.Cancelled):
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
    beats ``Cancelled``, whatever the order the tasks failed in).
    """
    found = leaves(group)
    best = found[0]
    best_rank = rank(best)
    for e in found[1:]:
        r = rank(e)
        if r > best_rank:
            best, best_rank = e, r
    return best


@contextlib.asynccontextmanager
async def open_nursery(rank: Rank = default_rank) -> AsyncIterator[trio.Nursery]:
    """A nursery whose errors surface as the single most telling exception (see
    :func:`first_error`), not a group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        leaf = first_error(group, rank)
        # Re-raising sets the leaf's __context__ (to the group): keep its own chain intact, so
        # what caused it (e.g. the sqlite3 error behind a CrsyncError) can still be found.
        cause, context, suppress = leaf.__cause__, leaf.__context__, leaf.__suppress_context__
        try:
            raise leaf
        finally:
            leaf.__cause__, leaf.__context__ = cause, context
            leaf.__suppress_context__ = suppress
