"""``crsync.Peer``: background sync of one database with one store on a relay (asyncio or trio).

The peer works on its own SQLite connection to the database file (in worker threads, one call
at a time), so the app keeps using ``db.conn`` on its own thread. It

* pushes the local changes the relay has not acknowledged, whole transactions at a time, and
  records each acknowledgement in ``crsync_peers`` (event ``push``);
* merges the changes the relay sends and records the relay version in the same transaction as
  the merge (event ``pull``), then tells the relay (``received``);
* notices local writes from any connection or process through the file's watcher (shared with
  every Peer and live query of the process on that file, see :mod:`crsync.watcher`), checking
  ``PRAGMA data_version`` on its own connection at each notification and every second;
* reconnects with exponential backoff and full jitter, and stops with :class:`PeerState.ERROR`
  on errors retrying cannot fix (refused token, schema mismatch, a TLS certificate that does
  not verify, a corrupt local file);
* retries local-storage errors that can pass (the app holding a write lock past the busy
  timeout, I/O errors, disk full) the same way, showing them in :attr:`Peer.reason`.

However it ends (cancelled from outside at any await, or on an error), leaving ``async with``
releases the sync lock, closes the peer's SQLite connection and leaves the file's watcher first.

It runs on anyio: under ``trio.run`` or ``asyncio.run`` alike (the WebSocket client is
``websockets``' implementation for the running loop, see :mod:`crsync._websocket`).
"""

from __future__ import annotations

import enum
import functools
import logging
import random
import socket
import ssl as ssl_module
import sys
import urllib.parse
from collections.abc import Callable
from types import TracebackType
from typing import Any, Generic, NoReturn, TypeVar, overload

import anyio
import attrs
from anyio.abc import TaskGroup
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.uri import parse_uri

from . import device_session as ds
from . import positions, watcher
from . import protocol as p
from ._async_util import open_task_group
from ._sqlite_errors import causes, error_name, is_transient, retry_reason, sqlite_cause
from ._sync_lock import SyncLock
from ._task_errors import first_error, is_cancelled
from ._websocket import Connection
from ._websocket import connect as ws_connect
from .change import Change
from .database import Database, connect
from .errors import (
    AuthError,
    ConnectError,
    CrsyncError,
    LocalStorageError,
    PeerFailedError,
    PeerStoppedError,
    ProtocolError,
    RelayURLError,
    SchemaMismatchError,
    SyncError,
    SyncTimeoutError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class PeerState(enum.Enum):
    """Where a peer is in its life."""

    CONNECTING = "connecting"
    SYNCING = "syncing"  # connected, catching up or pushing
    SYNCED = "synced"  # connected, nothing to push, caught up with the relay's head
    OFFLINE = "offline"  # waiting to reconnect
    ERROR = "error"  # stopped: see Peer.error
    STANDBY = "standby"  # another process (or Peer) syncs this file; waiting for its lock
    STOPPED = "stopped"


@attrs.define
class PeerStats:
    """Counters of one peer's work since it started."""

    connects: int = 0
    pushed_changes: int = 0
    pushed_units: int = 0
    received_changes: int = 0
    merged_wins: int = 0
    retries: int = 0  # failures the peer retried (connection, relay or local storage)
    rejected_changes: int = 0  # set aside: this database could not apply them
    compacted_tombstones: int = 0  # compacted below the relay's horizon
    last_error: str | None = None


class _Reconnect(Exception):
    """Close this connection and open a new one at once."""


class _Fatal(Exception):
    """Wraps an error that must stop the peer."""

    def __init__(self, error: CrsyncError) -> None:
        super().__init__(str(error))
        self.error = error


def _describe(exc: BaseException) -> str:
    """An error and its causes in one line (a TLS failure hides under trio's
    BrokenResourceError, a refused connection inside trio's group of connection attempts)."""
    parts = []
    for e in causes(exc):
        if isinstance(e, BaseExceptionGroup):
            continue
        text = str(e)
        part = f"{type(e).__name__}: {text}" if text else type(e).__name__
        if part not in parts:
            parts.append(part)
    return " <- ".join(parts) or type(exc).__name__


# Special-use names that never resolve (RFC 6761, RFC 6762): a relay URL naming one is a
# mistake retrying cannot fix. Other names that do not resolve are retried: a laptop that
# starts offline gets "no such host" from some resolvers (macOS) until the network is up.
_NEVER_RESOLVES = (".invalid", ".example", ".test")

# OpenSSL reasons of a TLS handshake with a server that does not speak TLS (wss:// to a ws://
# relay, or to another protocol).
_NOT_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",
        "RECORD_LAYER_FAILURE",
        "PACKET_LENGTH_TOO_LONG",
        "HTTP_REQUEST",
        "UNKNOWN_PROTOCOL",
        "WRONG_SSL_VERSION",
    }
)


# How a TLS handshake with a server that does not speak TLS can fail: an SSL error (trio, or
# asyncio when the server answers), or the server hanging up (asyncio reports the reset alone).
_TLS_HANDSHAKE_FAILURES = (
    ssl_module.SSLError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
)


def check_relay_url(url: object) -> tuple[str, int]:
    """Validate a relay URL; return (host, port). Raises :class:`RelayURLError`."""
    if not isinstance(url, str):
        raise RelayURLError(f"relay URL must be a string, not {type(url).__name__}")
    if not url.startswith(("ws://", "wss://")):
        raise RelayURLError(f"relay URL must start with ws:// or wss://, not {url!r}")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise RelayURLError(
            f"relay URL {url!r} contains spaces or control characters (a stray space?)"
        )
    try:
        parsed = parse_uri(url)
        port = urllib.parse.urlsplit(url).port
    except (InvalidURI, ValueError) as exc:
        raise RelayURLError(f"invalid relay URL {url!r}: {exc}") from None
    if port == 0:
        raise RelayURLError(f"invalid relay URL {url!r}: port 0")
    host = parsed.host
    if not host or host.startswith(".") or ".." in host:
        raise RelayURLError(f"invalid relay URL {url!r}: bad host name {host!r}")
    return host, parsed.port


# What ended a session, from most to least telling (see _rank): an unexpected error (a bug),
# an error retrying cannot fix, one that can pass, a reconnect request, a cancellation.
_UNEXPECTED, _FATAL, _RETRY, _RECONNECT, _CANCELLED = 4, 3, 2, 1, 0


@attrs.frozen
class _Outcome:
    kind: int
    reason: str
    error: CrsyncError | None = None
    local: bool = False  # the local database, not the relay or the network


def _classify(exc: BaseException, url: str, host: str) -> _Outcome:
    """Sort an exception that ended a session into fatal / retryable / reconnect."""
    if is_cancelled(exc):
        return _Outcome(_CANCELLED, "cancelled")
    if isinstance(exc, _Fatal):
        return _Outcome(_FATAL, str(exc.error), exc.error)
    if isinstance(exc, _Reconnect):
        return _Outcome(_RECONNECT, str(exc))
    sq = sqlite_cause(exc)
    if sq is not None:
        if is_transient(sq):
            return _Outcome(
                _RETRY, f"local database unavailable ({error_name(sq)}: {sq})", local=True
            )
        err: CrsyncError = LocalStorageError(
            f"the local database failed ({error_name(sq)}: {sq}); retrying cannot fix this"
        )
        err.__cause__ = exc
        return _Outcome(_FATAL, str(err), err)
    chain = causes(exc)
    for e in chain:
        if isinstance(e, ssl_module.SSLCertVerificationError):
            err = ConnectError(
                f"TLS certificate of the relay {url} does not verify "
                f"({e.verify_message or e.reason}); pass Peer(ssl=...) a context trusting its "
                "certificate authority"
            )
            err.__cause__ = exc
            return _Outcome(_FATAL, str(err), err)
        if isinstance(e, ssl_module.SSLError) and getattr(e, "reason", None) in _NOT_TLS:
            err = ConnectError(
                f"the relay at {url} does not speak TLS ({e.reason}); is it a ws:// relay?"
            )
            err.__cause__ = exc
            return _Outcome(_FATAL, str(err), err)
    for e in chain:
        if isinstance(e, socket.gaierror):
            if host.lower().rstrip(".").endswith(_NEVER_RESOLVES) and e.errno in (
                socket.EAI_NONAME,
                getattr(socket, "EAI_NODATA", socket.EAI_NONAME),
            ):
                err = ConnectError(f"relay host {host!r} does not exist ({e.strerror})")
                err.__cause__ = exc
                return _Outcome(_FATAL, str(err), err)
            return _Outcome(_RETRY, f"cannot resolve relay host {host!r}: {e.strerror}")
    if isinstance(exc, ProtocolError):
        return _Outcome(_RETRY, f"relay error {exc}")
    if isinstance(exc, CrsyncError):
        return _Outcome(_FATAL, str(exc), exc)
    if isinstance(
        exc,
        (
            OSError,
            ConnectionClosed,
            InvalidHandshake,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            TimeoutError,
        ),
    ) or _trio_stream_error(exc):
        return _Outcome(_RETRY, f"relay {url} unreachable: {_describe(exc)}")
    err = PeerFailedError(f"the peer stopped on an unexpected error: {_describe(exc)}")
    err.__cause__ = exc
    return _Outcome(_UNEXPECTED, str(err), err)


def _trio_stream_error(exc: BaseException) -> bool:
    """trio's own stream errors (a TLS handshake with a relay that hangs up fails with one)."""
    trio = sys.modules.get("trio")
    return trio is not None and isinstance(
        exc, (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError)
    )


def _data_version(db: Database) -> int:
    return int(db.conn.execute("PRAGMA data_version").fetchone()[0])


def _schema(db: Database) -> dict[str, p.TableSchema]:
    return {
        t: p.TableSchema(
            tuple(d["pk"]),  # type: ignore[arg-type]
            tuple(d["columns"]),  # type: ignore[arg-type]
            tuple(d["notnull"]),  # type: ignore[arg-type]
            bool(d["integer_key"]),
        )
        for t, d in db.schema_descriptions().items()
    }


class _FromSession(Generic[T]):
    """A read-only attribute of :class:`Peer` that is its device session's (WIRING: the
    positions belong to :class:`crsync.device_session.DeviceSession`)."""

    def __init__(self, get: Callable[[ds.DeviceSession], T], doc: str) -> None:
        self._get = get
        self._name = ""
        self.__doc__ = doc

    def __set_name__(self, owner: type[Peer], name: str) -> None:
        self._name = name

    @overload
    def __get__(self, peer: None, owner: type[Peer]) -> _FromSession[T]: ...
    @overload
    def __get__(self, peer: Peer, owner: type[Peer]) -> T: ...
    def __get__(self, peer: Peer | None, owner: type[Peer]) -> T | _FromSession[T]:
        return self if peer is None else self._get(peer._rules)

    def __set__(self, peer: Peer, value: NoReturn) -> NoReturn:
        raise AttributeError(f"Peer.{self._name} is read-only (the device session's)")


class Peer:
    """Sync a database with a store on a relay, in the background.

    Example::

        async with crsync.Peer(db, "ws://127.0.0.1:8765", store="alice", token=t) as peer:
            await peer.wait_synced()
    """

    def __init__(
        self,
        db: Database,
        url: str,
        *,
        store: str,
        token: str | None = None,
        ssl: ssl_module.SSLContext | None = None,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        batch_cells: int = 5000,
        backoff_initial: float = 0.1,
        backoff_max: float = 30.0,
        open_timeout: float = 10.0,
        watch_files: bool = True,
        on_progress: Callable[[int, int], None] | None = None,
        sync_lock: bool = True,
        busy_timeout: float = 10.0,
        horizon_interval: float = 3600.0,
    ) -> None:
        """Configure a peer; nothing happens until ``async with``.

        Args:
            db: the database to sync (file-backed).
            url: ``ws://host:port`` or ``wss://host:port``.
            store: the store id on the relay.
            token: an access token from ``crsync-relay token`` (None for a ``--dev`` relay).
            ssl: TLS context for ``wss://`` (e.g. trusting a private CA).
            max_frame: largest frame accepted from the relay.
            batch_cells: changes per pushed frame.
            backoff_initial: first reconnect delay bound in seconds (full jitter).
            backoff_max: largest reconnect delay bound.
            open_timeout: timeout of opening a connection and of the handshake.
            watch_files: notice writes by other connections through file notifications.
            on_progress: called with ``(done, total)`` of the current catch-up, in cells,
                after each unit merged and each part of a multi-part unit staged: ``done`` =
                cells merged or staged since the relay's welcome (the cells of a resumed
                unit held from the previous connection included), ``total`` = ``done`` at
                the welcome + the cells the relay said it holds after this device's
                position (``welcome.remaining``), never below ``done`` (changes written
                meanwhile arrive too). A relay that does not count (an older one, without
                ``remaining``) gets relay versions instead: ``done`` = the merged version -
                the position at the welcome, ``total`` = the relay's head - that position.
                :attr:`progress` holds the last pair.
            sync_lock: elect one syncer per database file: the peer holds an OS lock on
                ``<db>.crsync-sync.lock`` (released when its process dies) and, while another
                process or peer holds it, waits in :attr:`PeerState.STANDBY` and takes over
                when it is released.
            busy_timeout: how long (seconds) the peer's writes wait for a lock held by another
                connection before giving up; the peer then retries later (see :attr:`reason`).
            horizon_interval: while connected, ask the relay every this many seconds where
                the store's horizon is (a ``ping``; the relay also says it in ``welcome``), so
                a device that stays connected for weeks compacts its tombstones below it too.

        Raises:
            RelayURLError: the URL cannot work (scheme, host, port, a stray space).
            CrsyncError: the database is in memory, or ``store``/``token`` are not text.
        """
        path = db.path
        if path is None:
            raise CrsyncError("a Peer needs a database stored in a file, not in memory")
        self._host, self._port = check_relay_url(url)
        if ssl is not None and not url.startswith("wss://"):
            raise RelayURLError(f"an ssl context needs a wss:// relay URL, not {url!r}")
        if not isinstance(store, str):
            raise CrsyncError(f"store must be a string, not {type(store).__name__}")
        if token is not None and not isinstance(token, str):
            raise CrsyncError(f"token must be a string or None, not {type(token).__name__}")
        for what, text in (("store", store), ("token", token or "")):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise CrsyncError(f"{what} {text!r} is not valid text: {exc.reason}") from None
        self.path = path
        self.url = url
        self.store = store
        self.token = token
        self.ssl = ssl
        self.max_frame = max_frame
        self.batch_cells = batch_cells
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.open_timeout = open_timeout
        self.watch_files = watch_files
        self.on_progress = on_progress
        if not horizon_interval > 0:
            raise CrsyncError(f"horizon_interval must be positive, not {horizon_interval!r}")
        self.horizon_interval = horizon_interval
        # The frame being handled, decoded and as received (a staged part is kept as received).
        self._frame: tuple[object, bytes | None] = (None, None)
        # Changes of the parts staged for the unit being received, when this process staged
        # all of them (None: some were staged by an earlier connection, on disk only).
        self._held: list[Change] | None = []
        # WIRING (crsync.device_session): every sync rule lives in self._rules; this class
        # performs its actions (docs in crsync/device_session.py).
        self._rules = ds.DeviceSession(store, token, max_frame=max_frame, batch_cells=batch_cells)
        self._rules.site_id = db.site_id
        self.key = f"relay:{store}"
        self.state = PeerState.STOPPED
        self.error: CrsyncError | None = None
        #: Why the peer is not syncing right now (OFFLINE, STANDBY, ERROR), else None.
        self.reason: str | None = None
        #: The file whose OS lock elects this file's one syncer (see ``sync_lock``).
        self.lock_path = path + ".crsync-sync.lock"
        self.busy_timeout = busy_timeout
        self.stats = PeerStats()
        self._db: Database | None = None
        self._db_lock = anyio.Lock()
        self._progress = anyio.Event()
        self._local = anyio.Event()
        self._ws: Connection | None = None
        self._send_lock = anyio.Lock()
        self._tasks_cm: Any = None
        self._tasks: TaskGroup | None = None
        self.sync_lock = sync_lock
        self._lock: SyncLock | None = None
        self._last_data_version = -1
        self._established = False  # the current session got the relay's welcome
        #: The last ``(done, total)`` reported to ``on_progress`` (see its description).
        self.progress: tuple[int, int] = (0, 0)

    # WIRING: the positions are the session's (read-only here).
    site_id = _FromSession(
        lambda s: s.site_id, "The site id this peer syncs as (it changes when the site is reset)."
    )
    epoch = _FromSession(lambda s: s.epoch, "The relay store's epoch the positions belong to.")
    push_upto = _FromSession(
        lambda s: s.push_upto, "The local version the relay holds everything up to."
    )
    pull_upto = _FromSession(lambda s: s.pull_upto, "The relay version merged here.")
    relay_head = _FromSession(lambda s: s.relay_head, "The relay's head as last heard.")
    local_sealed = _FromSession(
        lambda s: s.local_sealed, "The last local version a push round looked at."
    )

    # ------------------------------------------------------------------ lifecycle

    async def _elect(self) -> None:
        """Wait until this peer is the file's one syncer."""
        if not self.sync_lock:
            return
        lock = self._lock
        if lock is None:
            lock = self._lock = SyncLock(self.lock_path)
        if lock.try_acquire():
            return
        self.reason = self._standby_reason()
        if self.state is not PeerState.STANDBY:  # (__aenter__ found the lock taken already)
            log.info("crsync.peer.standby store=%s lock=%s", self.store, self.lock_path)
        self._set_state(PeerState.STANDBY)
        while not lock.try_acquire():  # noqa: ASYNC110 - an OS lock offers nothing to wait on
            await anyio.sleep(0.2)
        self.reason = None
        log.info("crsync.peer.elected store=%s lock=%s", self.store, self.lock_path)

    def _standby_reason(self) -> str:
        return f"another process or Peer syncs this file: it holds the lock {self.lock_path}"

    def _open_db(self) -> Database:
        return connect(
            self.path, check_same_thread=False, busy_timeout_ms=int(self.busy_timeout * 1000)
        )

    async def __aenter__(self) -> Peer:
        if self._tasks is not None or self._db is not None:
            raise CrsyncError("this Peer is already running")
        self.error = None
        self.reason = None
        # Try the file's syncer lock now (it does not block), so that the state is true from
        # the start: CONNECTING only for the file's syncer, STANDBY for the others.
        self.state = PeerState.CONNECTING
        if self.sync_lock:
            self._lock = SyncLock(self.lock_path)
            if not self._lock.try_acquire():
                self.state = PeerState.STANDBY
                self.reason = self._standby_reason()
                log.info("crsync.peer.standby store=%s lock=%s", self.store, self.lock_path)
        # Fresh for this run (and its event loop: a Peer may serve one asyncio.run, then
        # another, or trio.run).
        self._db_lock = anyio.Lock()
        self._send_lock = anyio.Lock()
        self._progress = anyio.Event()
        self._local = anyio.Event()
        try:
            try:
                self._db = await anyio.to_thread.run_sync(self._open_db)
            except Exception as exc:
                outcome = _classify(exc, self.url, self._host)
                if not outcome.local:
                    if outcome.error is None or outcome.error is exc:
                        raise
                    raise outcome.error from exc
                # Busy (the app holds a write lock) or failing for now: the peer opens it
                # when it can (see _open_when_possible).
                self.reason = outcome.reason
                self.stats.last_error = outcome.reason
            self._tasks_cm = anyio.create_task_group()
            self._tasks = await self._tasks_cm.__aenter__()
        except BaseException:
            # Cancelled (or failed) half way: undo what was done, whatever cancels us.
            with anyio.CancelScope(shield=True):
                await self._release()
            raise
        self._tasks.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        failure: BaseException | None = None
        try:
            if self._tasks is not None:
                self._tasks.cancel_scope.cancel()
                try:
                    # A task group's exit waits for its tasks even when the caller is cancelled.
                    await self._tasks_cm.__aexit__(None, None, None)
                except BaseExceptionGroup as group:
                    failure = first_error(group, self._rank)
                except BaseException as e:
                    failure = e
        finally:
            self._tasks = self._tasks_cm = None
            # Shielded: an outer cancellation (move_on_after around the ``async with``) must
            # not leave the lock held or the connection open.
            with anyio.CancelScope(shield=True):
                await self._release()
        if failure is not None and not (isinstance(failure, Exception) or is_cancelled(failure)):
            raise failure  # KeyboardInterrupt, SystemExit: before whatever the body raised
        if failure is not None and not is_cancelled(failure) and exc is None:
            if not isinstance(failure, CrsyncError):
                outcome = _classify(failure, self.url, self._host)
                if outcome.error is None:
                    raise PeerFailedError(f"the peer failed: {_describe(failure)}") from failure
                raise outcome.error
            raise failure
        return False

    async def _release(self) -> None:
        """Close the peer's connection, then release the sync lock; mark the peer stopped."""
        try:
            db, self._db = self._db, None
            if db is not None:
                async with self._db_lock:
                    await anyio.to_thread.run_sync(db.close)
        finally:
            lock, self._lock = self._lock, None
            if lock is not None:
                lock.release()
            self._ws = None
            if self.state is not PeerState.ERROR:
                self.state = PeerState.STOPPED
            self._wake()

    def _rank(self, exc: BaseException) -> int:
        if not (isinstance(exc, Exception) or is_cancelled(exc)):
            return _UNEXPECTED + 1  # KeyboardInterrupt, SystemExit: never swallowed
        return _classify(exc, self.url, self._host).kind

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking SQLite work on the peer's connection, one call at a time (waiting for
        the connection while the file could not be opened yet)."""
        while True:
            while self._db is None:
                self._check_running()
                await self._progress.wait()
            async with self._db_lock:
                db = self._db
                if db is not None:
                    return await anyio.to_thread.run_sync(functools.partial(fn, db, *args))

    async def _open_when_possible(self) -> None:
        """Open the peer's connection if __aenter__ could not (a busy or failing file)."""
        delay = self.backoff_initial
        while self._db is None:
            self._set_state(PeerState.OFFLINE)
            await anyio.sleep(random.uniform(0, delay))  # retry backoff (a timer)
            delay = min(delay * 2, self.backoff_max)
            try:
                db = await anyio.to_thread.run_sync(self._open_db)
            except Exception as exc:
                outcome = _classify(exc, self.url, self._host)
                if outcome.error is not None:
                    raise _Fatal(outcome.error) from exc
                self.reason = self.stats.last_error = outcome.reason
                self.stats.retries += 1
                continue
            self._db = db
            self.reason = None
            self._wake()

    def _set_state(self, state: PeerState) -> None:
        if state is not self.state:
            log.debug("crsync.peer.state store=%s state=%s", self.store, state.value)
            self.state = state
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = anyio.Event()

    def notify(self) -> None:
        """Tell the peer that local data changed (pushes without waiting for a notification)."""
        self._local.set()

    # ------------------------------------------------------------------ waiting

    def _check_running(self) -> None:
        """Raise the peer's error if it stopped on one, PeerStoppedError if it is not running."""
        if self.state is PeerState.ERROR and self.error is not None:
            raise self.error
        if self.state is PeerState.STOPPED:
            raise PeerStoppedError("the peer is not running (use it inside `async with`)")

    async def wait_state(self, *states: PeerState) -> PeerState:
        """Wait until the peer is in one of ``states``.

        Raises:
            CrsyncError: the peer stopped on an error (``self.error``) while waiting.
            PeerStoppedError: the peer stopped (left ``async with``) and STOPPED is not awaited.
        """
        while True:
            if self.state in states:
                return self.state
            self._check_running()
            await self._progress.wait()

    async def wait_synced(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        # (a timeout parameter on purpose: the error it raises says why the peer is not synced,
        # which a cancel scope around the call cannot)
        """Return once every local change made before the call is acknowledged by the relay
        and everything the relay had when this was called is merged here.

        Args:
            timeout: give up after this many seconds (None: wait as long as it takes, e.g.
                while offline).

        Raises:
            SyncTimeoutError: not synced within ``timeout``; the message says the state and
                why (``.state``, ``.reason``).
            CrsyncError: the peer stopped on an error (refused token, schema mismatch, a TLS
                certificate that does not verify, ...): ``self.error``.
            PeerStoppedError: the peer is not running.
        """
        if timeout is None:
            await self._wait_synced()
            return
        with anyio.move_on_after(timeout):
            await self._wait_synced()
            return
        state, reason = self.state.value, self.reason
        detail = f": {reason}" if reason else ""
        raise SyncTimeoutError(
            f"not synced after {timeout:g}s (peer {state}{detail})", state, reason
        )

    async def _wait_synced(self) -> None:
        self._check_running()
        target_local = await self._local_version()
        self.notify()
        head = await self._relay_head_now()
        while True:
            self._check_running()
            if self._rules.synced_to(target_local, head):  # WIRING
                return
            await self._progress.wait()

    async def _local_version(self) -> int:
        """The local db_version (sealing pending changes), retrying while the file is busy."""
        delay = self.backoff_initial
        while True:
            try:
                return await self._call(lambda db: db.db_version)
            except Exception as exc:
                self.stats.last_error = retry_reason(exc, "the local database failed")
                self.stats.retries += 1
            await anyio.sleep(random.uniform(0, delay))  # retry backoff (a timer)
            delay = min(delay * 2, self.backoff_max)
            self._check_running()

    def _raise_if_failed(self) -> None:
        self._check_running()

    async def _relay_head_now(self) -> int:
        """Ask the relay for its head (waiting for a connection if needed)."""
        while True:
            self._check_running()
            ws = self._ws
            if ws is not None and self.state in (PeerState.SYNCING, PeerState.SYNCED):
                ping = self._rules.ping()  # WIRING
                try:
                    async with self._send_lock:
                        await ws.send(p.encode(ping))
                except ConnectionClosed:
                    await self._progress.wait()
                    continue
                while (head := self._rules.pong(ping.id)) is None:
                    if self._ws is not ws:
                        break
                    self._raise_if_failed()
                    await self._progress.wait()
                if head is not None:
                    return head
                continue
            await self._progress.wait()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        """Elect, then connect and sync until cancelled; never raises but Cancelled: what
        stops the peer is recorded in ``self.error`` with state ERROR."""
        try:
            await self._open_when_possible()
            await self._elect()
            if self.watch_files and self._tasks is not None:
                self._tasks.start_soon(self._watch)  # only the elected syncer watches
            await self._loop()
        except Exception as exc:  # cannot open the file, or a bug in the loop: stop, visibly
            outcome = _classify(exc, self.url, self._host)
            error = outcome.error or PeerFailedError(f"the peer failed: {_describe(exc)}")
            self._stop(error)

    def _stop(self, error: CrsyncError) -> None:
        self.error = error
        self.reason = str(error)
        self.stats.last_error = str(error)
        log.error("crsync.peer.stopped store=%s error=%s", self.store, error)
        self._set_state(PeerState.ERROR)

    async def _loop(self) -> None:
        backoff = self.backoff_initial
        while True:
            self._set_state(PeerState.CONNECTING)
            self._established = False
            found: BaseException | None = None
            try:
                await self._session()
                outcome = _Outcome(_RETRY, "the relay closed the connection")
            except (Exception, BaseExceptionGroup) as exc:  # sorted out by _classify
                found = first_error(exc, self._rank) if isinstance(exc, BaseExceptionGroup) else exc
                if not isinstance(found, Exception):
                    raise  # Cancelled, KeyboardInterrupt, SystemExit
                outcome = _classify(found, self.url, self._host)
            finally:
                self._ws = None
                self._rules.disconnected()  # WIRING
            if outcome.kind == _RECONNECT:
                continue
            if (
                found is not None
                and outcome.error is None
                and not self._established
                and self.url.startswith("wss://")
                and any(isinstance(e, _TLS_HANDSHAKE_FAILURES) for e in causes(found))
                and await self._answers_plain_http()
            ):
                outcome = _Outcome(
                    _FATAL,
                    "",
                    ConnectError(
                        f"the relay at {self.url} does not speak TLS (it answers plain HTTP); "
                        "is it a ws:// relay?"
                    ),
                )
            if outcome.error is not None:
                self._stop(outcome.error)
                return
            self.reason = outcome.reason
            self.stats.last_error = outcome.reason
            self.stats.retries += 1
            log.info("crsync.peer.offline store=%s reason=%s", self.store, outcome.reason)
            self._set_state(PeerState.OFFLINE)
            if self._established and not outcome.local:
                # A lost connection after a working session: try again soon. A local failure
                # (the app holding a write lock) keeps backing off instead.
                backoff = self.backoff_initial
            delay = random.uniform(0, backoff)
            backoff = min(backoff * 2, self.backoff_max)
            await anyio.sleep(delay)  # reconnect backoff (a timer, not a synchronisation)

    async def _answers_plain_http(self) -> bool:
        """After a failed TLS handshake: does the relay's port speak plain HTTP? (A server that
        reads a TLS hello as a bad HTTP request may just hang up, which looks like a network
        failure; asking in plain HTTP tells the two apart.)"""
        with anyio.move_on_after(self.open_timeout):
            try:
                stream = await anyio.connect_tcp(self._host, self._port)
            except OSError:
                return False
            async with stream:
                request = f"GET / HTTP/1.1\r\nHost: {self._host}\r\nConnection: close\r\n\r\n"
                head = b""
                try:
                    await stream.send(request.encode("ascii", "replace"))
                    while len(head) < 5:
                        head += await stream.receive(5 - len(head))
                except (OSError, anyio.EndOfStream, anyio.BrokenResourceError):
                    return False
                return head == b"HTTP/"
        return False

    async def _session(self) -> None:
        # (a URL websockets refuses raises RelayURLError: fatal, see _classify)
        async with ws_connect(
            self.url, ssl=self.ssl, max_size=self.max_frame, open_timeout=self.open_timeout
        ) as ws:
            # WIRING: the hello and the welcome's rules are the session's.
            rules = self._rules
            epoch, push_upto, pull_upto = await self._call(positions.load, self.key)
            # The file may have moved to a new site id since this Peer was made (a copied
            # file, reset when opened, or `crsync reset-site`): sync as that site, and push
            # every site's changes once if the reset asked for it.
            site, full_push_token, site_key = await self._call(positions.site_and_full_push)
            schema = await self._call(_schema)
            staged = await self._call(positions.staged, self.key)
            # Parts staged by an earlier connection are on disk only: a resumed unit's merge
            # reads them from there; from its next unit on, parts are held in memory too.
            self._held = None if staged is not None else []
            stored = ds.Stored(epoch, push_upto, pull_upto)
            hello = rules.connect(stored, site, site_key, full_push_token, schema, staged)
            await ws.send(p.encode(hello))
            with anyio.fail_after(self.open_timeout):
                raw = await ws.recv()
            msg = rules.decode(raw)
            local = None
            if rules.needs_local_version(msg):
                local = await self._call(lambda db: db.db_version)
            await self._perform(ws, rules.handshake(msg, local))
            self.stats.connects += 1
            self._ws = ws
            self.reason = None
            self._established = True
            self._set_state(PeerState.SYNCING)
            log.info(
                "crsync.peer.connected store=%s head=%d cursor=%d",
                self.store,
                rules.relay_head,
                rules.pull_upto,
            )
            try:
                async with open_task_group(self._rank) as tasks:
                    tasks.start_soon(self._pusher, ws)
                    tasks.start_soon(self._ask_horizon, ws)
                    await self._receiver(ws)
                    tasks.cancel_scope.cancel()
            except ConnectionClosed as exc:
                # A relay refusing a push sends an error frame, then closes; a send failing on
                # the closed connection can end the session before the receiver read the frame.
                # The refusal, not the closing, is the outcome.
                await self._refusal_left(ws, exc)
                raise

    async def _perform(self, ws: Connection, actions: list[ds.Action]) -> None:
        """WIRING: do what the session asks, in order (see crsync/device_session.py)."""
        for a in actions:
            if isinstance(a, ds.Send):
                await self._send(ws, a.message)
                if isinstance(a.message, p.Push):
                    self.stats.pushed_changes += len(a.message.changes)
                    self.stats.pushed_units += not a.message.more
            elif isinstance(a, ds.AwaitAck):
                while self._rules.push_upto < a.upto:
                    await self._progress.wait()
            elif isinstance(a, ds.RecordPush):
                await self._call(positions.record, self.key, "push", a.epoch, a.upto)
            elif isinstance(a, ds.ClearFullPush):
                await self._call(positions.clear_full_push, a.token)
            elif isinstance(a, ds.MergeUnit):
                await self._merge(ws, a)
            elif isinstance(a, ds.StagePart):
                # The part as received is kept as it is (no encoding again), and its changes
                # stay in memory for the unit's merge while every staged part is held here.
                frame = self._frame[1] if self._frame[0] is a.part else None
                await self._call(positions.stage, self.key, a.epoch, a.part, frame)
                if self._held is not None:
                    self._held.extend(a.part.changes)
                self.stats.received_changes += len(a.part.changes)
                self._report_progress(a.progress)
            elif isinstance(a, ds.DropStaged):
                await self._call(positions.drop_staged, self.key)
                self._held = []
            elif isinstance(a, ds.ApplyHorizon):
                n = await self._call(positions.apply_horizon, self.key, a.horizon)
                self.stats.compacted_tombstones += n
                if n:
                    log.info(
                        "crsync.peer.compacted store=%s horizon=%d tombstones=%d",
                        self.store,
                        a.horizon,
                        n,
                    )
            elif isinstance(a, ds.ResetPositions):
                await self._call(positions.reset, self.key, a.epoch)
                if a.old_epoch:
                    log.warning(
                        "crsync.peer.epoch_changed store=%s old=%s new=%s head=%d went_back=%s",
                        self.store,
                        a.old_epoch,
                        a.epoch,
                        a.head,
                        a.went_back,
                    )
            elif isinstance(a, ds.ResetSite):
                new = await self._call(lambda db: db.reset_site())
                log.warning(
                    "crsync.peer.site_reset store=%s reason=%s new_site=%s",
                    self.store,
                    a.reason,
                    new.hex(),
                )
                self._rules.site_reset(new)
            elif isinstance(a, ds.Reconnect):
                raise _Reconnect(a.reason)
            elif isinstance(a, ds.Fail):
                if a.fatal:
                    raise _Fatal(a.error)
                raise a.error
            else:  # pragma: no cover - exhaustive over ds.Action
                raise AssertionError(f"unexpected action {a!r}")

    async def _merge(self, ws: Connection, unit: ds.MergeUnit) -> None:
        try:
            wins, rejected = await self._call(
                functools.partial(
                    positions.merge_and_record,
                    staged=unit.staged,
                    held=self._held if unit.staged else None,
                ),
                unit.changes,
                self.key,
                unit.epoch,
                unit.upto,
            )
        except CrsyncError as exc:
            if sqlite_cause(exc) is not None:
                raise  # the local file failed, not the changes: _classify decides
            raise _Fatal(SyncError(f"cannot merge changes from the relay: {exc}")) from None
        self._held = []  # the next unit's parts start here
        self.stats.received_changes += len(unit.changes)
        self.stats.merged_wins += wins
        self.stats.rejected_changes += rejected
        # The merge is durable. on_progress runs before the session counts it as merged: a
        # callback that raises stops the peer before any task (wait_synced) sees that merge.
        self._report_progress(unit.progress)
        await self._perform(ws, self._rules.merged())

    def _report_progress(self, progress: tuple[int, int]) -> None:
        self.progress = progress
        if self.on_progress is not None:
            try:
                self.on_progress(*progress)
            except Exception as exc:
                err = PeerFailedError(
                    f"the on_progress callback raised {type(exc).__name__}: {exc}"
                )
                err.__cause__ = exc
                raise _Fatal(err) from exc

    async def _refusal_left(self, ws: Connection, closed: BaseException) -> None:
        """Raise the relay's refusal if the connection ended with one: an error frame still
        buffered, or a close frame whose reason is a fatal error code (code 1008)."""
        with anyio.move_on_after(1):
            try:
                while True:
                    msg = self._rules.decode(await ws.recv())
                    if isinstance(msg, p.Error):
                        (fail,) = self._rules.receive(msg)
                        assert isinstance(fail, ds.Fail)
                        if fail.fatal:
                            raise _Fatal(fail.error) from closed
                        raise fail.error from closed
            except ConnectionClosed:
                pass
            except ProtocolError:
                return
        rcvd = getattr(closed, "rcvd", None)
        refused = None if rcvd is None else self._rules.closed(rcvd.code, rcvd.reason)
        if refused is not None:
            raise _Fatal(refused.error) from closed

    def _update_synced(self) -> None:
        if self._ws is not None and self._rules.synced:
            self._set_state(PeerState.SYNCED)
        elif self._ws is not None:
            self._set_state(PeerState.SYNCING)
        else:
            self._wake()

    async def _send(self, ws: Connection, msg: p.Message) -> None:
        async with self._send_lock:
            await ws.send(p.encode(msg))

    async def _pusher(self, ws: Connection) -> None:
        rules = self._rules
        while True:
            self._local = anyio.Event()
            sealed, changes = await self._call(lambda db, s=rules.push_upto: db.changes_since(s))
            # A full push also sends the compacted tombstones (as collected ones).
            collected = await self._call(positions.collected_tombstones) if rules.full_push else []
            # Checked after reading: a table is tracked before it is written, so changes of a
            # table tracked while connected always come with a schema that differs from the
            # one announced; the session then asks to reconnect, announcing it.
            schema = await self._call(_schema)
            await self._perform(ws, rules.push_round(sealed, changes, schema, collected))  # WIRING
            self._update_synced()
            await self._local.wait()

    async def _receiver(self, ws: Connection) -> None:
        rules = self._rules
        async for raw in ws:
            msg = rules.decode(raw)
            self._frame = (msg, raw if isinstance(raw, bytes) else None)
            await self._perform(ws, rules.receive(msg))  # WIRING
            self._frame = (None, None)
            self._update_synced()

    async def _ask_horizon(self, ws: Connection) -> None:
        """Every ``horizon_interval`` seconds, a ping: its pong carries the store's horizon,
        which the session turns into compaction (:class:`device_session.ApplyHorizon`)."""
        while True:
            await anyio.sleep(self.horizon_interval)
            await self._send(ws, self._rules.ping(answer=False))  # WIRING

    async def _watch(self) -> None:
        """Wake the pusher when the database files change (any connection, any process): the
        file's watcher (see :mod:`crsync.watcher`) says when to look, ``PRAGMA data_version``
        on the peer's connection says whether another connection committed."""
        self._last_data_version = await self._call(_data_version)
        async with watcher.notifications(self.path, fallback=1.0) as changed:
            while True:
                await changed.wait()
                await self._check_data_version()

    async def _check_data_version(self) -> None:
        try:
            v = await self._call(_data_version)
        except PeerStoppedError:
            raise
        except Exception:  # a busy or failing file: the sync loop reports it
            return
        if v != self._last_data_version:
            self._last_data_version = v
            self.notify()


__all__ = [
    "AuthError",
    "ConnectError",
    "LocalStorageError",
    "Peer",
    "PeerFailedError",
    "PeerState",
    "PeerStats",
    "PeerStoppedError",
    "RelayURLError",
    "SchemaMismatchError",
    "SyncTimeoutError",
    "check_relay_url",
]
