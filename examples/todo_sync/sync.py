"""Sync a todo database in a background thread, reporting to a UI thread through a queue.

A GUI toolkit owns its thread; crsync's :class:`~crsync.peer.Peer` runs on trio. The bridge:

* :class:`SyncThread` runs ``trio.run`` in a daemon thread; the Peer opens its own SQLite
  connection to the database file, so the UI keeps its connection on its own thread;
* the thread puts :class:`StateChanged`, :class:`DataChanged` and :class:`Stopped` events on
  :attr:`SyncThread.events` (a :class:`queue.Queue`) and then calls the ``wakeup`` callback,
  which must be safe to call from any thread and cheap (the Tk app writes one byte to a pipe
  that Tk watches); the UI drains the queue on its own thread. Merges arrive through the
  Peer's ``on_progress`` callback and state changes through ``Peer.wait_state``: nothing polls;
* the UI calls :meth:`SyncThread.notify` after a local write so the push starts at once (the
  Peer would also notice the write through file notifications).

Nothing here imports a GUI toolkit, so the tests drive it without a screen.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import trio

import crsync
from crsync.peer import Peer, PeerState

log = logging.getLogger(__name__)
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class StateChanged:
    """The peer moved to a new state; ``detail`` says why it is offline or stopped."""

    state: PeerState
    detail: str | None = None


@dataclass(frozen=True)
class DataChanged:
    """Changes from the relay were merged into the database file: re-read it."""

    relay_version: int
    relay_head: int
    wins: int  # changes that modified local data (0: the merge changed nothing)


@dataclass(frozen=True)
class Stopped:
    """The sync thread ended (``error`` is set if it crashed)."""

    error: str | None = None


SyncEvent = StateChanged | DataChanged | Stopped


def describe(state: PeerState, detail: str | None = None) -> str:
    """A short status line for a peer state."""
    text = {
        PeerState.CONNECTING: "connecting…",
        PeerState.SYNCING: "syncing…",
        PeerState.SYNCED: "synced",
        PeerState.OFFLINE: "offline, retrying",
        PeerState.ERROR: "sync stopped",
        PeerState.STOPPED: "not syncing",
    }[state]
    return f"{text}: {detail}" if detail and state in (PeerState.OFFLINE, PeerState.ERROR) else text


class SyncThread:
    """Keep one database file in sync with one store on a relay, in a background thread.

    Example::

        sync = SyncThread("laptop.db", "ws://127.0.0.1:8765", store="todos", token=t)
        sync.start()
        ...                      # on the UI thread: drain sync.events, call sync.notify()
        sync.stop()
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        url: str,
        *,
        store: str,
        token: str | None,
        wakeup: Callable[[], None] | None = None,
        backoff_max: float = 5.0,
    ) -> None:
        """Configure the thread; nothing connects before :meth:`start`.

        Args:
            path: the database file (its tables must already be tracked).
            url: the relay, ``ws://host:port`` or ``wss://host:port``.
            store: the store id on the relay.
            token: an access token for the store (None for a ``--dev`` relay).
            wakeup: called from the sync thread after each event is queued; must be
                thread-safe and must not block.
            backoff_max: longest wait between reconnection attempts, in seconds.
        """
        self.path = os.fspath(path)
        self.url = url
        self.store = store
        self.token = token
        self.wakeup = wakeup
        self.backoff_max = backoff_max
        self.events: queue.Queue[SyncEvent] = queue.Queue()
        self._thread = threading.Thread(target=self._main, name="crsync-sync", daemon=True)
        self._ready = threading.Event()
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._cancel: trio.CancelScope | None = None
        self._peer: Peer | None = None
        self._start_error: BaseException | None = None
        self._wins_seen = 0

    # ------------------------------------------------------------------ UI-thread API

    def start(self) -> None:
        """Start the thread; returns once the peer runs (it connects in the background).

        Raises:
            crsync.CrsyncError: the database or the URL is unusable.
        """
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise crsync.SyncError(f"the sync thread did not start within {START_TIMEOUT:.0f} s")
        if self._start_error is not None:
            self._thread.join(STOP_TIMEOUT)
            raise self._start_error

    def notify(self) -> None:
        """Tell the peer that the app wrote to the database (non-blocking, any thread)."""
        token, peer = self._trio_token, self._peer
        if token is None or peer is None:
            return
        try:
            token.run_sync_soon(peer.notify)
        except trio.RunFinishedError:
            pass

    @property
    def running(self) -> bool:
        """True while the sync thread is alive."""
        return self._thread.is_alive()

    @property
    def state(self) -> PeerState:
        peer = self._peer
        return PeerState.STOPPED if peer is None else peer.state

    def wait_synced(self, timeout: float) -> None:
        """Block until the peer is in sync with the relay (for tests and command-line use).

        Raises:
            trio.TooSlowError: not in sync within ``timeout`` seconds.
            crsync.CrsyncError: the peer stopped on an error.
        """
        token, peer = self._trio_token, self._peer
        if token is None or peer is None:
            raise crsync.SyncError("the sync thread is not running")

        async def wait() -> None:
            with trio.fail_after(timeout):
                await peer.wait_synced()

        trio.from_thread.run(wait, trio_token=token)

    def stop(self) -> None:
        """Stop syncing and wait (bounded) for the thread to end. Idempotent."""
        token, scope = self._trio_token, self._cancel
        if token is not None and scope is not None:
            try:
                token.run_sync_soon(scope.cancel)
            except trio.RunFinishedError:
                pass
        if self._thread.is_alive():
            self._thread.join(STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("todo_sync.sync thread did not stop within %.0f s", STOP_TIMEOUT)

    # ------------------------------------------------------------------ the sync thread

    def _emit(self, event: SyncEvent) -> None:
        self.events.put(event)
        if self.wakeup is not None:
            try:
                self.wakeup()
            except Exception:  # a closed UI must not kill the sync thread
                log.exception("todo_sync.sync wakeup failed")

    def _main(self) -> None:
        error: str | None = None
        try:
            trio.run(self._run)
        except BaseException as exc:
            if not self._ready.is_set():
                self._start_error = exc
                self._ready.set()
                return
            log.exception("todo_sync.sync thread crashed")
            error = f"{type(exc).__name__}: {exc}"
        self._emit(Stopped(error))

    async def _run(self) -> None:
        db = crsync.connect(self.path)  # only for the path and site id; the Peer opens its own
        try:
            with trio.CancelScope() as scope:
                peer = Peer(
                    db,
                    self.url,
                    store=self.store,
                    token=self.token,
                    backoff_max=self.backoff_max,
                    on_progress=self._on_progress,
                )
                async with peer:
                    self._peer = peer
                    self._cancel = scope
                    self._trio_token = trio.lowlevel.current_trio_token()
                    self._ready.set()
                    await self._report_states(peer)
        finally:
            db.close()

    def _on_progress(self, relay_version: int, relay_head: int) -> None:
        peer = self._peer
        wins = 0
        if peer is not None:
            wins = peer.stats.merged_wins - self._wins_seen
            self._wins_seen = peer.stats.merged_wins
        self._emit(DataChanged(relay_version, relay_head, wins))

    async def _report_states(self, peer: Peer) -> None:
        """Emit every state change (event-driven: ``Peer.wait_state`` wakes on each change)."""
        last = PeerState.STOPPED  # the state before the peer's first connection attempt
        while True:
            state = await peer.wait_state(*(s for s in PeerState if s is not last))
            last = state
            detail = None
            if state is PeerState.ERROR:
                detail = str(peer.error) if peer.error is not None else peer.stats.last_error
            elif state is PeerState.OFFLINE:
                detail = peer.stats.last_error
            self._emit(StateChanged(state, detail))
            if state is PeerState.ERROR:
                await trio.sleep_forever()  # stopped for good; keep the state until stop()
