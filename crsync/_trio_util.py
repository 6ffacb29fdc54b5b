"""Small trio helpers shared by the peer and the relay."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The most telling leaf of an exception group: the first one that is not Cancelled."""
    leaves: list[BaseException] = []

    def walk(e: BaseException) -> None:
        if isinstance(e, BaseExceptionGroup):
            for sub in e.exceptions:
                walk(sub)
        else:
            leaves.append(e)

    walk(group)
    for e in leaves:
        if not isinstance(e, trio.Cancelled):
            return e
    return leaves[0]


@contextlib.asynccontextmanager
async def open_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose errors surface as the single most telling exception, not a group."""
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        raise first_error(group) from None
