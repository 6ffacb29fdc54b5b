"""``crsync.Peer``: background sync of one database with one store on a relay (trio).

The peer works on its own SQLite connection to the database file (in worker threads, one call
at a time), so the app keeps using ``db.conn`` on its own thread. It

* pushes the local changes the relay has not acknowledged, whole transactions at a time, and
  records each acknowledgement in ``crsync_peers`` (event ``push``);
* merges the changes the relay sends and records the relay version in the same transaction as
  the merge (event ``pull``), then tells the relay (``received``);
* notices local writes from any connection or process through file-system notifications on the
  database files (``watchfiles``), with a cheap ``PRAGMA data_version`` check as a fallback;
* reconnects with exponential backoff and full jitter, and stops with :class:`PeerState.ERROR`
  on errors retrying cannot fix (refused token, schema mismatch).
"""

from __future__ import annotations

import enum
import fcntl
import functools
import logging
import os
import random
import ssl as ssl_module
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import attrs
import trio
from watchfiles import awatch
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.trio.client import ClientConnection
from websockets.trio.client import connect as ws_connect

from . import identity
from . import protocol as p
from ._trio_util import open_nursery
from .change import Change, validate_changes
from .database import Database, connect
from .errors import AuthError, CrsyncError, ProtocolError, SchemaMismatchError, SyncError

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
    last_error: str | None = None


class _Reconnect(Exception):
    """Close this connection and open a new one at once."""


class _Fatal(Exception):
    """Wraps an error that must stop the peer."""

    def __init__(self, error: CrsyncError) -> None:
        super().__init__(str(error))
        self.error = error


def _positions(db: Database, key: str) -> tuple[str, int, int]:
    rows = {
        event: (epoch, version)
        for event, epoch, version in db.conn.execute(
            "SELECT event, epoch, version FROM crsync_peers WHERE peer = ?", (key,)
        )
    }
    push = rows.get("push", ("", 0))
    pull = rows.get("pull", ("", 0))
    epoch = push[0] if push[0] == pull[0] else ""
    return epoch, push[1] if epoch else 0, pull[1] if epoch else 0


def _record(conn: Any, key: str, event: str, epoch: str, version: int) -> None:
    conn.execute(
        "INSERT INTO crsync_peers (peer, event, epoch, version, updated_at) "
        "VALUES (?, ?, ?, ?, (julianday('now') - 2440587.5) * 86400.0) "
        "ON CONFLICT (peer, event) DO UPDATE SET epoch = excluded.epoch, "
        "version = excluded.version, updated_at = excluded.updated_at",
        (key, event, epoch, version),
    )


def _record_tx(db: Database, key: str, event: str, epoch: str, version: int) -> None:
    with db._write() as conn:
        _record(conn, key, event, epoch, version)


def _site_and_full_push(db: Database) -> tuple[bytes, str | None]:
    with db._read() as conn:
        return db.site_id, identity.full_push_pending(conn)


def _clear_full_push(db: Database, token: str) -> None:
    with db._write() as conn:
        identity.clear_full_push(conn, token)


def _reset(db: Database, key: str, epoch: str) -> None:
    with db._write() as conn:
        _record(conn, key, "push", epoch, 0)
        _record(conn, key, "pull", epoch, 0)


def _merge_and_record(
    db: Database, changes: list[Change], key: str, epoch: str, version: int
) -> int:
    batch = validate_changes(changes)
    with db._write() as conn:
        db._refresh()
        wins = db._merge_locked(conn, batch) if batch else 0
        _record(conn, key, "pull", epoch, version)
    return wins


def _describe(exc: BaseException) -> str:
    """An error and its causes in one line (a TLS failure hides under BrokenResourceError)."""
    parts = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        text = str(e)
        parts.append(f"{type(e).__name__}: {text}" if text else type(e).__name__)
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)


def _data_version(db: Database) -> int:
    return int(db.conn.execute("PRAGMA data_version").fetchone()[0])


def _schema(db: Database) -> dict[str, p.TableSchema]:
    return {
        t: p.TableSchema(tuple(d["pk"]), tuple(d["columns"]))  # type: ignore[arg-type]
        for t, d in db.schema_descriptions().items()
    }


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
            on_progress: called with (merged relay version, relay head) after each merge.
            sync_lock: elect one syncer per database file: the peer holds an OS lock on
                ``<db>.crsync-sync.lock`` (released when its process dies) and, while another
                process or peer holds it, waits in :attr:`PeerState.STANDBY` and takes over
                when it is released.
        """
        path = db.path
        if path is None:
            raise CrsyncError("a Peer needs a database stored in a file, not in memory")
        if not url.startswith(("ws://", "wss://")):
            raise CrsyncError(f"relay URL must start with ws:// or wss://, not {url!r}")
        if ssl is not None and not url.startswith("wss://"):
            raise CrsyncError(f"an ssl context needs a wss:// relay URL, not {url!r}")
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
        self.site_id = db.site_id
        self.key = f"relay:{store}"
        self.state = PeerState.STOPPED
        self.error: CrsyncError | None = None
        self.stats = PeerStats()
        self.epoch = ""
        self.push_upto = 0  # local version the relay holds everything up to
        self.pull_upto = 0  # relay version merged here
        self.relay_head = 0
        self.local_sealed = 0  # last local version the pusher looked at
        self._db: Database | None = None
        self._db_lock = trio.Lock()
        self._progress = trio.Event()
        self._local = trio.Event()
        self._pongs: dict[int, int] = {}
        self._ping_ids = 0
        self._ws: ClientConnection | None = None
        self._send_lock = trio.Lock()
        self._watch_stop = threading.Event()  # stops the file watcher's thread promptly
        self._nursery_cm: Any = None
        self._nursery: trio.Nursery | None = None
        self._full_push_next = False
        self._full_push_token: str | None = None  # a site reset's full-push request
        self._full_push_until = 0  # the local version that full push ends at
        self._hello_schema: dict[str, p.TableSchema] = {}
        self.sync_lock = sync_lock
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ lifecycle

    def _try_lock(self) -> bool:
        """Take the file's syncer lock if free (flock: per open file, dies with the process)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self.path + ".crsync-sync.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    async def _elect(self) -> None:
        """Wait until this peer is the file's one syncer."""
        if not self.sync_lock or self._try_lock():
            return
        self._set_state(PeerState.STANDBY)
        log.info("crsync.peer.standby store=%s path=%s", self.store, self.path)
        while not self._try_lock():  # noqa: ASYNC110 - an OS lock offers nothing to wait on
            await trio.sleep(0.2)
        log.info("crsync.peer.elected store=%s path=%s", self.store, self.path)

    async def __aenter__(self) -> Peer:
        self._db = await trio.to_thread.run_sync(
            functools.partial(connect, self.path, check_same_thread=False)
        )
        self._watch_stop.clear()
        self._nursery_cm = trio.open_nursery()
        self._nursery = await self._nursery_cm.__aenter__()
        self._nursery.start_soon(self._run)
        if self.watch_files:
            self._nursery.start_soon(self._watch)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._nursery is not None
        # The watcher's worker thread cannot be cancelled; without this it would hold up the
        # exit until its timeout.
        self._watch_stop.set()
        self._nursery.cancel_scope.cancel()
        try:
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            if self.state is not PeerState.ERROR:
                self.state = PeerState.STOPPED
            if self._db is not None:
                db, self._db = self._db, None
                async with self._db_lock:
                    await trio.to_thread.run_sync(db.close)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the syncer lock
                self._lock_fd = None
        return False

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking SQLite work on the peer's connection, one call at a time."""
        assert self._db is not None
        async with self._db_lock:
            return await trio.to_thread.run_sync(functools.partial(fn, self._db, *args))

    def _set_state(self, state: PeerState) -> None:
        if state is not self.state:
            log.debug("crsync.peer.state store=%s state=%s", self.store, state.value)
            self.state = state
        self._wake()

    def _wake(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    def notify(self) -> None:
        """Tell the peer that local data changed (pushes without waiting for a notification)."""
        self._local.set()

    # ------------------------------------------------------------------ waiting

    async def wait_state(self, *states: PeerState) -> PeerState:
        """Wait until the peer is in one of ``states``; raise its error if it stops on one."""
        while True:
            if self.state in states:
                return self.state
            if self.state is PeerState.ERROR and self.error is not None:
                raise self.error
            await self._progress.wait()

    async def wait_synced(self) -> None:
        """Return once every local change made before the call is acknowledged by the relay
        and everything the relay had when this was called is merged here.

        Raises:
            CrsyncError: the peer stopped on an error (refused token, schema mismatch, ...).
        """
        target_local = await self._call(lambda db: db.db_version)
        self.notify()
        head = await self._relay_head_now()
        while True:
            if self.state is PeerState.ERROR and self.error is not None:
                raise self.error
            if self.push_upto >= target_local and self.pull_upto >= head:
                return
            await self._progress.wait()

    def _raise_if_failed(self) -> None:
        if self.state is PeerState.ERROR and self.error is not None:
            raise self.error

    async def _relay_head_now(self) -> int:
        """Ask the relay for its head (waiting for a connection if needed)."""
        while True:
            if self.state is PeerState.ERROR and self.error is not None:
                raise self.error
            ws = self._ws
            if ws is not None and self.state in (PeerState.SYNCING, PeerState.SYNCED):
                self._ping_ids += 1
                pid = self._ping_ids
                try:
                    async with self._send_lock:
                        await ws.send(p.encode(p.Ping(pid)))
                except (ConnectionClosed, trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._progress.wait()
                    continue
                while pid not in self._pongs:
                    if self._ws is not ws:
                        break
                    self._raise_if_failed()
                    await self._progress.wait()
                if pid in self._pongs:
                    return self._pongs.pop(pid)
                continue
            await self._progress.wait()

    # ------------------------------------------------------------------ the loop

    async def _run(self) -> None:
        await self._elect()
        backoff = self.backoff_initial
        while True:
            self._set_state(PeerState.CONNECTING)
            established = False
            try:
                established = await self._session()
            except _Reconnect:
                self._ws = None
                continue
            except _Fatal as exc:
                self.error = exc.error
                self.stats.last_error = str(exc.error)
                log.error("crsync.peer.stopped store=%s error=%s", self.store, exc.error)
                self._set_state(PeerState.ERROR)
                return
            except (
                OSError,
                ConnectionClosed,
                InvalidHandshake,
                trio.TooSlowError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
                ProtocolError,
                TimeoutError,
            ) as exc:
                self.stats.last_error = _describe(exc)
                log.info("crsync.peer.offline store=%s error=%s", self.store, self.stats.last_error)
            finally:
                self._ws = None
            self._set_state(PeerState.OFFLINE)
            if established:
                backoff = self.backoff_initial
            delay = random.uniform(0, backoff)
            backoff = min(backoff * 2, self.backoff_max)
            await trio.sleep(delay)  # reconnect backoff (a timer, not a synchronisation)

    async def _session(self) -> bool:
        try:
            cm = ws_connect(
                self.url,
                ssl=self.ssl,
                max_size=self.max_frame,
                proxy=None,
                open_timeout=self.open_timeout,
                compression=None,
            )
        except InvalidURI as exc:
            raise _Fatal(CrsyncError(f"invalid relay URL {self.url!r}: {exc}")) from None
        async with cm as ws:
            epoch, push_upto, pull_upto = await self._call(_positions, self.key)
            # The file may have moved to a new site id since this Peer was made (a copied
            # file, reset when opened, or `crsync reset-site`): sync as that site, and push
            # every site's changes once if the reset asked for it.
            self.site_id, self._full_push_token = await self._call(_site_and_full_push)
            self._full_push_until = 1 << 62
            schema = await self._call(_schema)
            self._hello_schema = schema
            hello = p.Hello(
                p.PROTOCOL_VERSION,
                self.store,
                self.site_id,
                schema,
                pull_upto if epoch else 0,
                epoch,
                self.token,
            )
            await ws.send(p.encode(hello))
            proto = p.PeerConnection(self.max_frame)
            with trio.fail_after(self.open_timeout):
                raw = await ws.recv()
            msg = proto.receive(raw)
            if isinstance(msg, p.Error):
                err = p.error_from(msg)
                if msg.code in {c.value for c in p.FATAL_FOR_PEER}:
                    raise _Fatal(err)
                raise err
            assert isinstance(msg, p.Welcome)
            full_push = False
            went_back = msg.epoch == epoch and msg.head < pull_upto
            if msg.epoch != epoch or went_back:
                # A new or reset store, or one restored from an older copy (its head is behind
                # what we merged; the relay then serves from version 0): push everything we
                # hold, fetch everything it has.
                await self._call(_reset, self.key, msg.epoch)
                push_upto = pull_upto = 0
                full_push = bool(epoch) or msg.head == 0
                if epoch:
                    log.warning(
                        "crsync.peer.epoch_changed store=%s old=%s new=%s head=%d went_back=%s",
                        self.store,
                        epoch,
                        msg.epoch,
                        msg.head,
                        went_back,
                    )
            elif msg.acked > await self._call(lambda db: db.db_version):
                # The relay holds more of this site's changes than the file: it was restored
                # from a backup or copied. Writes made under this identity after the backup
                # would be shadowed forever; continue under a new site id.
                new = await self._call(lambda db: db.reset_site())
                log.warning(
                    "crsync.peer.site_reset store=%s reason=relay-acked-%d-beyond-local "
                    "new_site=%s",
                    self.store,
                    msg.acked,
                    new.hex(),
                )
                self.site_id = new
                # Writes made on the restored file before this point carry the old identity:
                # push every site's changes once so none of them is left behind.
                self._full_push_next = True
                raise _Reconnect("site id reset; reconnecting under the new identity")
            elif msg.acked > push_upto:
                push_upto = msg.acked
                await self._call(_record_tx, self.key, "push", msg.epoch, push_upto)
            self.epoch = msg.epoch
            self.push_upto = push_upto
            self.pull_upto = pull_upto
            self.relay_head = max(msg.head, pull_upto)
            self.stats.connects += 1
            self._ws = ws
            self._set_state(PeerState.SYNCING)
            log.info(
                "crsync.peer.connected store=%s head=%d cursor=%d", self.store, msg.head, pull_upto
            )
            async with open_nursery() as nursery:
                full_push = full_push or self._full_push_next or bool(self._full_push_token)
                nursery.start_soon(self._pusher, ws, full_push)
                await self._receiver(ws, proto)
                nursery.cancel_scope.cancel()
        return True

    def _update_synced(self) -> None:
        synced = (
            self.pull_upto >= self.relay_head
            and self.push_upto >= self.local_sealed
            and self._ws is not None
        )
        if synced:
            self._set_state(PeerState.SYNCED)
        elif self._ws is not None:
            self._set_state(PeerState.SYNCING)
        else:
            self._wake()

    async def _send(self, ws: ClientConnection, msg: p.Message) -> None:
        async with self._send_lock:
            await ws.send(p.encode(msg))

    async def _pusher(self, ws: ClientConnection, full_push: bool) -> None:
        batch = 0
        own = self.site_id
        while True:
            self._local = trio.Event()
            sealed, changes = await self._call(lambda db, s=self.push_upto: db.changes_since(s))
            # Checked after reading: a table is tracked before it is written, so changes of a
            # table tracked while connected always come with a schema that differs from the
            # one announced. Announce it (the relay checks it) before pushing them.
            if await self._call(_schema) != self._hello_schema:
                raise _Reconnect("replicated schema changed")
            if not full_push:
                changes = [c for c in changes if c.site_id == own]
            self.local_sealed = max(self.local_sealed, sealed)
            if full_push:  # a reset's request is cleared when the relay acknowledges this
                self._full_push_until = sealed
            if changes:
                units = p.chunk_changes(changes, self.batch_cells, self.max_frame // 2)
                base = self.push_upto
                for i, (unit_upto, part, more) in enumerate(units):
                    final = i == len(units) - 1
                    upto = sealed if final else unit_upto
                    batch += 1
                    await self._send(ws, p.Push(batch, base, upto, part, more))
                    self.stats.pushed_changes += len(part)
                    if more:
                        continue
                    self.stats.pushed_units += 1
                    while self.push_upto < upto:
                        await self._progress.wait()
                    base = upto
            elif sealed > self.push_upto:
                await self._call(_record_tx, self.key, "push", self.epoch, sealed)
                self.push_upto = sealed
            if full_push and self._full_push_token and not changes:
                await self._call(_clear_full_push, self._full_push_token)
                self._full_push_token = None
            full_push = False
            self._full_push_next = False
            self._update_synced()
            await self._local.wait()

    async def _receiver(self, ws: ClientConnection, proto: p.PeerConnection) -> None:
        parts: list[Change] = []
        async for raw in ws:
            msg = proto.receive(raw)
            if isinstance(msg, p.Error):
                err = p.error_from(msg)
                if msg.code in {c.value for c in p.FATAL_FOR_PEER}:
                    raise _Fatal(err)
                raise err
            if isinstance(msg, p.Ack):
                if msg.upto > self.push_upto:
                    await self._call(_record_tx, self.key, "push", self.epoch, msg.upto)
                    if self._full_push_token and msg.upto >= self._full_push_until:
                        await self._call(_clear_full_push, self._full_push_token)
                        self._full_push_token = None
                    self.push_upto = msg.upto
                self.relay_head = max(self.relay_head, msg.head)
                self._update_synced()
            elif isinstance(msg, p.Changes):
                if msg.base != self.pull_upto:
                    raise ProtocolError(
                        p.ErrorCode.UNEXPECTED.value,
                        f"relay sent changes from version {msg.base}, expected {self.pull_upto}",
                    )
                parts.extend(msg.changes)
                if msg.more:
                    continue
                unit, parts = parts, []
                try:
                    wins = await self._call(_merge_and_record, unit, self.key, self.epoch, msg.upto)
                except CrsyncError as exc:
                    raise _Fatal(SyncError(f"cannot merge changes from the relay: {exc}")) from None
                self.pull_upto = msg.upto
                self.relay_head = max(self.relay_head, msg.upto)
                self.stats.received_changes += len(unit)
                self.stats.merged_wins += wins
                await self._send(ws, p.Received(msg.upto))
                if self.on_progress is not None:
                    self.on_progress(self.pull_upto, self.relay_head)
                self._update_synced()
            elif isinstance(msg, p.Pong):
                self._pongs[msg.id] = msg.head
                self.relay_head = max(self.relay_head, msg.head)
                self._update_synced()

    async def _watch(self) -> None:
        """Wake the pusher when the database files change (any connection, any process)."""
        db_path = Path(self.path)
        names = {str(db_path), str(db_path) + "-wal"}
        last = await self._call(_data_version)
        async for _ in awatch(
            db_path.parent,
            watch_filter=lambda _change, path: path in names,
            debounce=50,
            step=2,
            rust_timeout=1000,
            yield_on_timeout=True,
            recursive=False,
            stop_event=cast(Any, self._watch_stop),  # only is_set() is used, from a thread
        ):
            v = await self._call(_data_version)
            if v != last:
                last = v
                self.notify()


__all__ = ["AuthError", "Peer", "PeerState", "PeerStats", "SchemaMismatchError"]
