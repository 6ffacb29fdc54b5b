"""``crsync.SyncThread``: a :class:`~crsync.peer.Peer` in a background thread, for apps that own
their main thread (Tk, Qt, wx, plain threads).

The thread runs its own event loop; the app talks to it only through thread-safe methods and
reads its state from any thread. Nothing the peer meets (a relay restart, another process
holding the file's sync lock, a refused token, a callback that raises) is raised into the
app's thread: it shows as :attr:`SyncThread.status` (a :class:`~crsync.peer.PeerState` and
its reason), and in the callbacks and queue the app chose. Only :meth:`SyncThread.wait_synced`
raises, when the app asks to wait and the peer has stopped on an error.

The event-loop code is the ``_Run`` class and the ``_async_*`` methods: a nursery, a cancel
scope, a token to call into the loop from other threads (``run_sync_soon``), worker threads
for blocking SQLite work.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import functools
import inspect
import logging
import math
import os
import queue
import threading
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ._sqlite_errors import retry_reason
from .database import Database, connect
from .errors import CrsyncError, PeerFailedError, PeerStoppedError
from .live import RowChange
from .peer import Peer, PeerState, check_relay_url

_T = TypeVar("_T")
log = logging.getLogger(__name__)

#: How long :meth:`SyncThread.start` waits for the thread's event loop to run.
START_TIMEOUT = 10.0
#: What :meth:`SyncThread.stop` waits by default, and the thread at interpreter exit.
STOP_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0
# How long wait_synced waits beyond its timeout for the loop to answer (a loop that does not
# answer by then is stuck; the call returns False rather than hang).
_ANSWER_GRACE = 5.0
_HISTORY = 64  # states kept for wait_state (a state held for a moment is not missed)
_REOPEN_MAX = 5.0  # longest wait between attempts to open a busy database file

_PEER_OPTIONS = frozenset(inspect.signature(Peer.__init__).parameters) - {
    "self",
    "db",
    "url",
    "store",
}


@attrs.frozen
class SyncStatus:
    """What a :class:`SyncThread` is doing: a state, why (for OFFLINE, STANDBY, ERROR, and
    CONNECTING after a failure), and the error that stopped it (ERROR only)."""

    state: PeerState
    reason: str | None = None
    error: CrsyncError | None = None
    #: ``(done, total)`` of the current catch-up, as the peer's ``on_progress`` reports it
    #: (cells received and expected, see :class:`crsync.Peer`), or None before the first
    #: report. It is kept current in :attr:`SyncThread.status`; a change of progress alone
    #: is not a status change (no :class:`StateChanged`, no ``on_state`` call): pass
    #: ``on_progress`` to be called on each report.
    progress: tuple[int, int] | None = attrs.field(default=None, eq=False)


@attrs.frozen
class StateChanged:
    """Queued on :attr:`SyncThread.events` when the status changes."""

    status: SyncStatus


@attrs.frozen
class DataChanged:
    """Queued on :attr:`SyncThread.events` when rows of replicated tables changed (merged
    from the relay, or written locally: see :attr:`crsync.live.RowChange.local`)."""

    changes: list[RowChange]


SyncEvent = StateChanged | DataChanged
CallSoon = Callable[[Callable[[], None]], None]


class _Run:
    """One start..stop of the thread: its thread, loop token, nursery and peer."""

    def __init__(self, owner: SyncThread, name: str) -> None:
        self.thread = threading.Thread(target=owner._main, args=(self,), name=name, daemon=True)
        self.ready = threading.Event()  # the loop runs (or the thread ended)
        self.stop_requested = False
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self.peer: Peer | None = None
        self.peer_entered: trio.Event | None = None
        self.waits: set[concurrent.futures.Future[bool]] = set()

    def cancel(self) -> None:
        """Run in the loop: end the run."""
        if self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def call(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` in the loop soon (from any thread); False if the loop has ended."""
        token = self.token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True


class SyncThread:
    """Keep one database file in sync with one store on a relay, from a background thread.

    Example (any thread; see docs/guides/gui-apps.md for Tk and Qt)::

        sync = crsync.SyncThread("app.db", "ws://127.0.0.1:8765", store="alice", token=t)
        sync.on_state(lambda status: print(status.state, status.reason))
        sync.start()
        sync.wait_synced(10)     # True once in sync, False after 10 s
        sync.stop()

    Every public method and property is thread-safe. Callbacks run on the sync thread, or
    wherever ``call_soon`` sends them; they must not block, and an exception they raise is
    logged (``crsync.sync_thread.callback_failed``) without stopping anything.
    """

    def __init__(
        self,
        db: Database | str | os.PathLike[str],
        url: str,
        *,
        store: str,
        token: str | None = None,
        call_soon: CallSoon | None = None,
        events: queue.Queue[SyncEvent] | None = None,
        watch_changes: bool = True,
        name: str | None = None,
        **peer_options: Any,
    ) -> None:
        """Configure the thread; nothing runs before :meth:`start`.

        Args:
            db: the database file to sync (a path, or a file-backed :class:`Database` whose
                path is used: the thread opens its own connections and never touches the
                app's).
            url: the relay, ``ws://host:port`` or ``wss://host:port``.
            store: the store id on the relay.
            token: an access token for the store (None for a ``--dev`` relay).
            call_soon: where callbacks run: called (from the sync thread) with a function of
                no arguments that the app runs on its own thread, e.g. a Qt signal's ``emit``.
                It must not block. None: callbacks run on the sync thread.
            events: a queue that also receives a :class:`StateChanged` or :class:`DataChanged`
                for each change (put from the sync thread); the app drains it when it likes.
            watch_changes: follow the changed rows of replicated tables (for :meth:`on_change`
                and :class:`DataChanged`); False saves a connection and a file watcher.
            name: the thread's name (default ``crsync-sync-<store>``).
            **peer_options: passed to :class:`~crsync.peer.Peer` (``ssl``, ``backoff_max``,
                ``sync_lock``, ``busy_timeout``, ...).

        Raises:
            RelayURLError: the URL cannot work.
            CrsyncError: an in-memory database, ``store``/``token`` not text, an unknown or
                reserved peer option.
        """
        if isinstance(db, Database):
            if db.path is None:
                raise CrsyncError("a SyncThread needs a database stored in a file, not in memory")
            path = db.path
        elif isinstance(db, str | os.PathLike):
            path = os.fspath(db)
            if path == ":memory:" or not path:
                raise CrsyncError("a SyncThread needs a database stored in a file, not in memory")
        else:
            raise CrsyncError(f"db must be a Database or a path, not {type(db).__name__}")
        check_relay_url(url)
        if not isinstance(store, str):
            raise CrsyncError(f"store must be a string, not {type(store).__name__}")
        if token is not None and not isinstance(token, str):
            raise CrsyncError(f"token must be a string or None, not {type(token).__name__}")
        unknown = sorted(set(peer_options) - _PEER_OPTIONS)
        if unknown:
            raise CrsyncError(f"unknown Peer options: {', '.join(unknown)}")
        if call_soon is not None and not callable(call_soon):
            raise CrsyncError("call_soon must be callable")
        self.path = path
        self.url = url
        self.store = store
        self.token = token
        self.call_soon = call_soon
        self.events = events
        self.watch_changes = watch_changes
        self.name = name or f"crsync-sync-{store}"
        self.peer_options = dict(peer_options)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._status = SyncStatus(PeerState.STOPPED)
        self._history: deque[tuple[int, PeerState]] = deque(maxlen=_HISTORY)
        self._generation = 0
        self._run: _Run | None = None
        self._state_callbacks: list[Callable[[SyncStatus], None]] = []
        self._change_callbacks: list[
            tuple[Callable[[list[RowChange]], None], frozenset[str] | None]
        ] = []

    def __repr__(self) -> str:
        s = self.status
        return f"<SyncThread {self.path!r} store={self.store!r} {s.state.value}>"

    # ------------------------------------------------------------------ the app's side

    def start(self) -> None:
        """Start syncing in the background (any thread). Returns once the thread's loop runs;
        it connects in the background. Does nothing if already running; after :meth:`stop`
        it starts again. Never raises for what happens while syncing: see :attr:`status`."""
        with self._lock:
            run = self._run
            if run is not None and run.thread.is_alive():
                if not run.stop_requested:
                    return
                previous: _Run | None = run
            else:
                previous = None
        here = previous is not None and previous.thread is threading.current_thread()
        if previous is not None and not here:  # stopping: let it end first (bounded)
            previous.thread.join(STOP_TIMEOUT)
        with self._lock:
            current = self._run
            if current is not previous and current is not None and current.thread.is_alive():
                return  # another thread started it meanwhile
            # (from a callback of the ending run, once its loop has ended: it holds nothing)
            ended_here = here and previous is not None and previous.token is None
            if previous is not None and previous.thread.is_alive() and not ended_here:
                log.warning(
                    "crsync.sync_thread.start_refused store=%s reason=previous-run-still-stopping",
                    self.store,
                )
                return
            run = _Run(self, self.name)
            self._run = run
            _register(self)
            run.thread.start()
        run.ready.wait(START_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> bool:
        """Stop syncing and wait up to ``timeout`` seconds for the thread to end (any thread;
        idempotent). Returns True once the thread has ended (the sync lock released and the
        connections closed). Called on the sync thread itself (from a callback) it only asks
        the thread to stop and returns False."""
        with self._lock:
            run = self._run
            if run is None:
                return True
            run.stop_requested = True
        run.call(run.cancel)  # a run not ready yet cancels itself when it sees stop_requested
        if threading.current_thread() is run.thread:
            return False
        if run.thread.ident is not None:
            run.thread.join(timeout)
        if run.thread.is_alive():
            log.warning("crsync.sync_thread.stop_timeout store=%s timeout=%g", self.store, timeout)
            return False
        return True

    def __enter__(self) -> SyncThread:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the sync thread is alive."""
        run = self._run
        return run is not None and run.thread.is_alive()

    @property
    def status(self) -> SyncStatus:
        """The current :class:`SyncStatus` (state, reason, error), read atomically."""
        with self._lock:
            return self._status

    @property
    def state(self) -> PeerState:
        return self.status.state

    @property
    def reason(self) -> str | None:
        return self.status.reason

    @property
    def error(self) -> CrsyncError | None:
        return self.status.error

    def notify(self) -> None:
        """Tell the peer the app wrote to the database, so it pushes at once (any thread;
        never blocks; the peer also notices writes through file notifications)."""
        run = self._run
        if run is not None:
            run.call(lambda: run.peer.notify() if run.peer is not None else None)

    def wait_state(self, *states: PeerState, timeout: float) -> PeerState | None:
        """Block until the thread reports one of ``states`` (now, or any time after the call,
        even for a moment); return it, or None after ``timeout`` seconds."""
        _check_timeout(timeout)
        wanted = frozenset(states)
        with self._cond:
            start = self._generation
            if self._status.state in wanted:
                return self._status.state
            found: list[PeerState] = []

            def seen() -> bool:
                found.extend(s for g, s in self._history if g > start and s in wanted)
                return bool(found)

            if self._cond.wait_for(seen, timeout):
                return found[0]
        return None

    def wait_synced(self, timeout: float) -> bool:
        """Block until every local change made before the call is acknowledged by the relay
        and everything the relay had then is merged here (see ``Peer.wait_synced``).

        Returns:
            True once in sync; False if that did not happen within ``timeout`` seconds
            (offline, or in STANDBY while another process syncs the file).

        Raises:
            CrsyncError: the error that stopped the peer (``AuthError``, ...), before or
                during the wait.
            PeerStoppedError: the thread is not running, or was stopped during the wait.
        """
        _check_timeout(timeout)
        run = self._run
        if run is None or not run.thread.is_alive():
            raise self._not_running()
        run.ready.wait(min(timeout, START_TIMEOUT))
        fut: concurrent.futures.Future[bool] = concurrent.futures.Future()

        def spawn() -> None:
            if run.nursery is None:
                return
            run.waits.add(fut)
            try:
                run.nursery.start_soon(self._async_wait_synced, run, fut, timeout)
            except RuntimeError:  # the nursery is closing: the run ends, failing the wait
                pass

        if not run.call(spawn):
            raise self._not_running()
        try:
            return fut.result(timeout + _ANSWER_GRACE)
        except concurrent.futures.TimeoutError:
            return False

    def on_state(self, callback: Callable[[SyncStatus], None]) -> Callable[[], None]:
        """Call ``callback(status)`` on each change of :attr:`status` (on the sync thread, or
        through ``call_soon``). A quick A→B→A may reach it as A only. Returns a function
        that unsubscribes. Read :attr:`status` for the state before the first call."""
        return self._subscribe(self._state_callbacks, callback)

    def on_change(
        self, callback: Callable[[list[RowChange]], None], tables: Sequence[str] | None = None
    ) -> Callable[[], None]:
        """Call ``callback(changes)`` with the rows of replicated tables (of ``tables``, or all)
        that changed: merged from the relay (``RowChange.local`` False) or written on this
        file by any connection or process (True). On the sync thread, or through
        ``call_soon``. Needs ``watch_changes=True``. Returns a function that unsubscribes."""
        if not self.watch_changes:
            raise CrsyncError("on_change needs SyncThread(watch_changes=True)")
        entry = (callback, None if tables is None else frozenset(t.lower() for t in tables))
        return self._subscribe(self._change_callbacks, entry)

    def _subscribe(self, entries: list[_T], entry: _T) -> Callable[[], None]:
        """Add ``entry`` to ``entries`` (under the lock); return the function removing it."""
        with self._lock:
            entries.append(entry)

        def remove() -> None:
            with self._lock:
                if entry in entries:
                    entries.remove(entry)

        return remove

    # ------------------------------------------------------------------ reporting

    def _not_running(self) -> CrsyncError:
        status = self.status
        if status.state is PeerState.ERROR and status.error is not None:
            return status.error
        return PeerStoppedError("the sync thread is not running (call start())")

    def _publish(self, status: SyncStatus) -> None:
        """Record a status and tell the app (callbacks, queue, waiters); any thread."""
        with self._cond:
            if status.progress is None and self._status.progress is not None:
                status = attrs.evolve(status, progress=self._status.progress)
            if status == self._status:
                return
            self._status = status
            self._generation += 1
            self._history.append((self._generation, status.state))
            self._cond.notify_all()
            callbacks = list(self._state_callbacks)
        log.debug(
            "crsync.sync_thread.state store=%s state=%s reason=%s",
            self.store,
            status.state.value,
            status.reason,
        )
        if self.events is not None:
            self.events.put(StateChanged(status))
        for cb in callbacks:
            self._deliver(cb, status)

    def _progress(
        self, app_callback: Callable[[int, int], None] | None, done: int, total: int
    ) -> None:
        """The peer's on_progress: keep it in the status, then call the app's (on the sync
        thread, as a Peer does: an exception it raises stops the peer)."""
        with self._cond:
            self._status = attrs.evolve(self._status, progress=(done, total))
        if app_callback is not None:
            app_callback(done, total)

    def _changed(self, changes: list[RowChange]) -> None:
        with self._lock:
            callbacks = list(self._change_callbacks)
        if self.events is not None:
            self.events.put(DataChanged(changes))
        for cb, tables in callbacks:
            mine = changes if tables is None else [c for c in changes if c.table.lower() in tables]
            if mine:
                self._deliver(cb, mine)

    def _deliver(self, callback: Callable[[Any], None], arg: object) -> None:
        def call() -> None:
            try:
                callback(arg)
            except Exception:
                log.exception(
                    "crsync.sync_thread.callback_failed store=%s callback=%r", self.store, callback
                )

        if self.call_soon is None:
            call()
            return
        try:
            self.call_soon(call)
        except Exception:  # a closed window must not stop the sync
            log.exception("crsync.sync_thread.call_soon_failed store=%s", self.store)

    # ------------------------------------------------------------------ the sync thread

    def _main(self, run: _Run) -> None:
        final: SyncStatus | None = None
        try:
            self._publish(SyncStatus(PeerState.CONNECTING))
            final = trio.run(self._async_main, run)
        except BaseException as exc:  # a bug: report it, never raise it anywhere
            log.exception("crsync.sync_thread.crashed store=%s", self.store)
            err = PeerFailedError(f"the sync thread failed: {type(exc).__name__}: {exc}")
            err.__cause__ = exc
            final = SyncStatus(PeerState.ERROR, str(err), err)
        finally:
            run.ready.set()
            run.token = None
            status = final or SyncStatus(PeerState.STOPPED)
            self._publish(status)
            stopped = status.error or PeerStoppedError("the sync thread stopped while waiting")
            for fut in list(run.waits):
                if not fut.done():
                    fut.set_exception(stopped)

    async def _async_main(self, run: _Run) -> SyncStatus:
        final = SyncStatus(PeerState.STOPPED)
        async with trio.open_nursery() as nursery:
            run.peer_entered = trio.Event()
            with self._lock:
                run.nursery = nursery
                run.token = trio.lowlevel.current_trio_token()
                if run.stop_requested:
                    nursery.cancel_scope.cancel()
            run.ready.set()
            try:
                final = await self._async_sync(run, nursery)
            finally:
                nursery.cancel_scope.cancel()
        return final

    async def _async_sync(self, run: _Run, nursery: trio.Nursery) -> SyncStatus:
        """Open the file, run the peer until it stops on an error; the final status."""
        try:
            db = await self._async_open()
        except CrsyncError as exc:
            log.error("crsync.sync_thread.open_failed store=%s error=%s", self.store, exc)
            return SyncStatus(PeerState.ERROR, str(exc), exc)
        try:
            try:
                options = dict(self.peer_options)
                options["on_progress"] = functools.partial(
                    self._progress, options.get("on_progress")
                )
                peer = Peer(db, self.url, store=self.store, token=self.token, **options)
            except CrsyncError as exc:
                return SyncStatus(PeerState.ERROR, str(exc), exc)
            run.peer = peer
            if self.watch_changes:
                nursery.start_soon(self._async_feed, db)
            try:
                async with peer:
                    assert run.peer_entered is not None
                    run.peer_entered.set()
                    await self._async_follow(peer)
            except CrsyncError as exc:  # __aenter__ could not open the file for good
                return SyncStatus(PeerState.ERROR, str(exc), exc)
            if peer.state is PeerState.ERROR:
                error = peer.error or PeerFailedError(peer.reason or "the peer failed")
                return SyncStatus(PeerState.ERROR, str(error), error)
            return SyncStatus(PeerState.STOPPED)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(db.close)

    async def _async_open(self) -> Database:
        """Open the file (for the peer's path and site id), waiting while it is busy."""
        busy_ms = int(float(self.peer_options.get("busy_timeout", 10.0)) * 1000)
        delay = 0.1
        while True:
            try:
                return await trio.to_thread.run_sync(
                    lambda: connect(self.path, check_same_thread=False, busy_timeout_ms=busy_ms)
                )
            except Exception as exc:
                reason = retry_reason(exc, f"cannot open {self.path}")
            self._publish(SyncStatus(PeerState.OFFLINE, reason))
            await trio.sleep(delay)  # retry backoff (a timer)
            delay = min(delay * 2, _REOPEN_MAX)

    async def _async_follow(self, peer: Peer) -> None:
        """Publish the peer's state and reason on each change, until it stops on an error."""
        others = {s: tuple(o for o in PeerState if o is not s) for s in PeerState}
        while True:
            state = peer.state
            self._publish(SyncStatus(state, peer.reason, peer.error))
            if state in (PeerState.ERROR, PeerState.STOPPED):
                return
            try:
                await peer.wait_state(*others[state])
            except CrsyncError:
                pass  # stopped on an error: the next look publishes it

    async def _async_feed(self, db: Database) -> None:
        """Hand changed rows to the app; a failing feed is logged and opened again."""
        delay = 0.5
        while True:
            try:
                async with db.changes_feed() as feed:
                    async for changes in feed:
                        delay = 0.5
                        self._changed(changes)
            except Exception:  # the feed fails alone: syncing goes on
                log.warning("crsync.sync_thread.feed_failed store=%s", self.store, exc_info=True)
            await trio.sleep(delay)  # retry backoff (a timer)
            delay = min(delay * 2, _REOPEN_MAX)

    async def _async_wait_synced(
        self, run: _Run, fut: concurrent.futures.Future[bool], seconds: float
    ) -> None:
        try:
            with trio.move_on_after(seconds):
                assert run.peer_entered is not None
                await run.peer_entered.wait()
                assert run.peer is not None
                await run.peer.wait_synced()
                fut.set_result(True)
                return
            fut.set_result(False)
        except CrsyncError as exc:
            if not fut.done():
                fut.set_exception(exc)
        finally:
            run.waits.discard(fut)
            if not fut.done():  # cancelled: the run is ending
                fut.set_exception(self._ended_error())

    def _ended_error(self) -> CrsyncError:
        run = self._run
        peer = run.peer if run is not None else None
        if peer is not None and peer.state is PeerState.ERROR and peer.error is not None:
            return peer.error
        return PeerStoppedError("the sync thread stopped while waiting")


def _check_timeout(timeout: object) -> None:
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or math.isnan(timeout)
        or timeout < 0
    ):
        raise CrsyncError(f"timeout must be a non-negative number of seconds, not {timeout!r}")


# ---------------------------------------------------------------------- interpreter exit

_live: weakref.WeakSet[SyncThread] = weakref.WeakSet()
_registered = False
_registry_lock = threading.Lock()


def _register(sync: SyncThread) -> None:
    """Stop running threads when the interpreter exits: before it joins non-daemon threads
    (``threading._register_atexit``), else with :mod:`atexit`. The thread is a daemon, so a
    thread that does not stop in time cannot hold up the exit."""
    global _registered
    with _registry_lock:
        _live.add(sync)
        if _registered:
            return
        _registered = True
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(_stop_all)
    except RuntimeError:  # missing, or the interpreter is shutting down already
        atexit.register(_stop_all)


def _stop_all() -> None:
    running = [s for s in list(_live) if s.running]
    for s in running:
        run = s._run
        if run is not None:
            run.stop_requested = True
            run.call(run.cancel)
    for s in running:
        s.stop(EXIT_TIMEOUT)


__all__ = [
    "DataChanged",
    "StateChanged",
    "SyncEvent",
    "SyncStatus",
    "SyncThread",
]
