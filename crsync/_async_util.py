"""Small anyio helpers of the peer, live queries and the file watcher (asyncio or trio).

* :func:`open_task_group`: a task group whose failure is its single most telling error
  (ranked by :mod:`crsync._task_errors`);
* :func:`loop_caller`: hand a function to the running event loop from any thread (how the
  file watcher's thread wakes async subscribers);
* :class:`Signal`: a level-triggered wake-up for one event loop, settable from any thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import anyio
import sniffio
from anyio.abc import TaskGroup

from ._task_errors import Rank, default_rank, flattened

CallSoon = Callable[[Callable[[], object]], None]


def open_task_group(rank: Rank = default_rank) -> AbstractAsyncContextManager[TaskGroup]:
    """A task group whose errors surface as the single most telling exception (see
    :func:`crsync._task_errors.first_error`), not a group."""
    return flattened(anyio.create_task_group(), rank)


def loop_caller() -> CallSoon:
    """A function that runs ``fn()`` soon in the *current* event loop's thread, callable from
    any thread, never blocking. It raises ``RuntimeError`` once that loop has ended (trio's
    ``RunFinishedError`` is one)."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return token.run_sync_soon
    if library == "asyncio":
        import asyncio

        loop = asyncio.get_running_loop()

        def call_soon(fn: Callable[[], object]) -> None:
            loop.call_soon_threadsafe(fn)

        return call_soon
    raise RuntimeError(f"crsync runs on asyncio or trio, not {library}")


class Signal:
    """A wake-up for one task at a time on one event loop: :meth:`set` (from that loop) or
    :meth:`set_threadsafe` (from any thread) wakes :meth:`wait`; a set before the wait is
    kept (level-triggered) and one wait consumes it.

    Bound to the loop of its first :meth:`wait` or :meth:`bind`; it can be made outside any
    event loop.
    """

    def __init__(self) -> None:
        self._event: anyio.Event | None = None
        self._set = False
        self._pending = threading.Event()  # a thread-side set is on its way to the loop
        self._call_soon: CallSoon | None = None

    def bind(self) -> None:
        """Bind to the running event loop (before handing ``set_threadsafe`` to a thread)."""
        if self._call_soon is None:
            self._call_soon = loop_caller()

    def set(self) -> None:
        self._set = True
        if self._event is not None:
            self._event.set()

    def set_threadsafe(self) -> None:
        """Set from another thread (coalesced: one hop to the loop per wait at most).

        Raises ``RuntimeError`` if the loop it is bound to has ended."""
        if self._pending.is_set():
            return
        call_soon = self._call_soon
        if call_soon is None:
            raise RuntimeError("Signal.set_threadsafe before bind()")
        self._pending.set()
        try:
            call_soon(self._set_from_thread)
        except BaseException:
            self._pending.clear()
            raise

    def _set_from_thread(self) -> None:
        self._pending.clear()
        self.set()

    async def wait(self) -> None:
        """Wait until set, then clear."""
        self.bind()
        if not self._set:
            if self._event is None:
                self._event = anyio.Event()
            await self._event.wait()
        self._set = False
        self._event = None
