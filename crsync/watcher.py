"""One file watcher per database file, shared by every Peer and live query of the process.

:func:`subscribe` registers a callback for a database file. The first subscriber of a file
starts a daemon thread that watches the file's directory with ``watchfiles`` (the main file
and its ``-wal``; one OS watch), the last one leaving stops it (and waits for it). Callbacks run
in that thread: they must be quick and thread-safe (set a flag, hand a function to an event
loop, see :class:`crsync._async_util.Signal`).

A callback is called when the file may have changed: after a notification, and at least every
``fallback`` seconds without one (what was written over a network file system, or by a
process whose writes the OS does not report, is then seen by the subscriber's own check,
``PRAGMA data_version``). If the OS refuses the watch (its limit of watches reached), the
thread calls every subscriber each ``fallback`` period instead, and says so in the log once.

A callback that raises is dropped (an event loop that ended, typically).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable

import anyio

from ._async_util import Signal

log = logging.getLogger(__name__)

TICK_SECONDS = 0.25
"""Longest time the watcher thread waits for a notification before it checks its subscribers'
fallback periods (the shortest fallback a subscriber gets)."""

_LOCK = threading.Lock()  # guards _WATCHERS and every watcher's subscriber set
_WATCHERS: dict[str, _FileWatcher] = {}


class Subscription:
    """One subscriber of a file's watcher; :meth:`close` ends it (idempotent)."""

    def __init__(self, watcher: _FileWatcher, callback: Callable[[], object], fallback: float):
        self.watcher = watcher
        self.callback = callback
        self.fallback = max(fallback, TICK_SECONDS)
        self._due = time.monotonic() + self.fallback

    @property
    def path(self) -> str:
        """The database file (resolved) this subscription watches."""
        return self.watcher.path

    def close(self) -> None:
        """Unsubscribe. The last subscriber of a file stops its thread and waits for it (a few
        milliseconds), unless called from that thread."""
        self.watcher.remove(self)

    def _call(self, now: float, changed: bool) -> bool:
        """Call back if the file changed or the fallback period passed; False to drop."""
        if not changed and now < self._due:
            return True
        self._due = now + self.fallback
        try:
            self.callback()
        except Exception as exc:
            log.debug("crsync.watcher.subscriber_dropped path=%s error=%r", self.path, exc)
            return False
        return True


class _FileWatcher:
    """The thread watching one database file for its subscribers."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.subs: set[Subscription] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"crsync.watcher:{path}", daemon=True)

    def remove(self, sub: Subscription) -> None:
        with _LOCK:
            self.subs.discard(sub)
            if self.subs or self.stop.is_set():
                return
            self.stop.set()
            if _WATCHERS.get(self.path) is self:
                del _WATCHERS[self.path]
        if threading.current_thread() is not self.thread:
            self.thread.join()

    def _dispatch(self, changed: bool) -> None:
        with _LOCK:
            subs = list(self.subs)
        now = time.monotonic()
        dropped = [s for s in subs if not s._call(now, changed)]
        for s in dropped:
            s.close()

    def _run(self) -> None:
        try:
            self._watch()
        except Exception as exc:  # the OS refused the watch (e.g. its limit of watches)
            log.warning(
                "crsync.watcher.watch_failed path=%s error=%s: %s; polling instead",
                self.path,
                type(exc).__name__,
                exc,
            )
            while not self.stop.wait(TICK_SECONDS):
                self._dispatch(changed=False)

    def _watch(self) -> None:
        from watchfiles import watch

        names = {self.path, self.path + "-wal"}
        for changes in watch(
            os.path.dirname(self.path),
            watch_filter=lambda _change, path: path in names,
            debounce=50,
            step=2,
            rust_timeout=int(TICK_SECONDS * 1000),
            yield_on_timeout=True,
            recursive=False,
            raise_interrupt=False,
            stop_event=self.stop,
        ):
            if self.stop.is_set():
                return
            self._dispatch(changed=bool(changes))


def subscribe(path: str, callback: Callable[[], object], fallback: float) -> Subscription:
    """Call ``callback()`` (in the watcher's thread) whenever the database file ``path`` may
    have changed, and at least every ``fallback`` seconds. ``close()`` the subscription."""
    key = os.path.realpath(path)
    with _LOCK:
        w = _WATCHERS.get(key)
        if w is None:
            w = _WATCHERS[key] = _FileWatcher(key)
            w.thread.start()
        sub = Subscription(w, callback, fallback)
        w.subs.add(sub)
    return sub


@contextlib.asynccontextmanager
async def notifications(path: str, fallback: float) -> AsyncIterator[Signal]:
    """The async form of :func:`subscribe` (asyncio or trio): a :class:`Signal` of the
    current event loop, set whenever the file may have changed. Leaving the block
    unsubscribes, shielded from cancellation (the watcher's thread has stopped when the last
    subscriber's block is left)."""
    changed = Signal()
    changed.bind()
    sub = subscribe(path, changed.set_threadsafe, fallback)
    try:
        yield changed
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(sub.close)


def watched_files() -> list[str]:
    """The database files watched now (one thread and one OS watch each)."""
    with _LOCK:
        return sorted(_WATCHERS)


__all__ = ["TICK_SECONDS", "Subscription", "notifications", "subscribe", "watched_files"]
