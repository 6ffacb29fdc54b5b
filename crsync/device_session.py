"""A device's side of the sync protocol, sans I/O: events in, actions out.

:class:`DeviceSession` holds every sync rule a device applies when it syncs one database with
one store on a relay: the hello, positions and epochs, acks, push rounds, merging what the
relay sends and telling it ``received``, pings and ``wait_synced`` bookkeeping, multi-part
units, full-push requests, the site reset on ``site_forbidden`` and schema re-announcement.
It does no I/O (no sqlite3, trio, anyio, websockets or file watching): ``crsync.Peer`` is
the async loop around it that reads the database, talks to the relay and performs the actions the
session returns. One session object lives as long as the ``Peer`` (what it knows carries over
reconnections); :meth:`DeviceSession.connect` starts each connection.

How ``Peer`` drives it
----------------------

Actions are performed **in order**, each before the next; an action that fails ends the
connection (its error is classified as today).

1. Connect (``Peer._session``): open the socket; read ``positions.load(key)`` (epoch,
   push_upto, pull_upto), ``positions.site_and_full_push()`` (site, full-push token, site
   key), the replicated schema (``_schema(db)``) and the unit staged from an earlier
   connection (``positions.staged(key)``); send ``hello = s.connect(Stored(epoch, push_upto,
   pull_upto), site, site_key, token, schema, staged)``.
2. Read one frame within ``open_timeout``: ``msg = s.decode(raw)``; if
   ``s.needs_local_version(msg)`` read ``local = db.db_version`` (else None); perform
   ``s.handshake(msg, local)``:

   * ``ResetPositions(epoch, ...)``: ``positions.reset(key, epoch)`` (log ``epoch_changed``
     when ``old_epoch`` is set);
   * ``RecordPush(epoch, upto)``: ``positions.record(key, "push", epoch, upto)``;
   * ``ResetSite(reason)``: ``new = db.reset_site()``; ``s.site_reset(new)``; log
     ``site_reset`` with the reason;
   * ``Reconnect(reason)``: raise ``_Reconnect(reason)``;
   * ``Fail(error, fatal)``: raise ``_Fatal(error)`` if ``fatal`` else ``error``;
   * ``DropStaged()``: ``positions.drop_staged(key)`` (the relay did not resume the unit);
   * ``ApplyHorizon(epoch, horizon)``: ``positions.apply_horizon(key, horizon)`` (record the
     relay's horizon, compact the tombstones below it).

   Afterwards the connection is open (``s.connected``: stats.connects += 1, state SYNCING,
   ``reason = None``); ``s.full_push`` says whether the first push round pushes every site's
   changes (the loop needs nothing else to know).
3. Then, concurrently, until one of them ends the connection:

   * push loop (``Peer._pusher``): forever: clear the local-change event; read
     ``sealed, changes = db.changes_since(s.push_upto)``, the schema and, if ``s.full_push``,
     ``collected = positions.collected_tombstones()``; perform
     ``s.push_round(sealed, changes, schema, collected)``: ``Send(Push)`` (count ``pushed_changes``;
     a part with ``more = false`` ends a unit: ``pushed_units``), ``AwaitAck(upto)`` (wait for
     progress until ``s.push_upto >= upto``), ``RecordPush``, ``ClearFullPush(token)``
     (``positions.clear_full_push(token)``), ``Reconnect`` (the schema changed: announce it
     in a new hello); then update the state from ``s.synced`` and wait for a local change.
   * receive loop (``Peer._receiver``): for each frame, perform ``s.receive(s.decode(raw))``:
     ``RecordPush``/``ClearFullPush`` (an ack), ``StagePart(epoch, part, progress)``
     (``positions.stage(key, epoch, part)``, then ``on_progress(*progress)``),
     ``MergeUnit(changes, epoch, upto, staged, progress)``
     (``wins, rejected = positions.merge_and_record(changes, key, epoch, upto,
     staged=staged)``; a merge failure that is not the local file's is fatal; count the
     stats; call ``on_progress(*progress)``; then perform ``s.merged()`` ->
     ``Send(Received)``), ``ApplyHorizon`` (a pong's), ``Fail``; then update the state from
     ``s.synced`` (this wakes ``AwaitAck`` and ``wait_synced``).
   * ``wait_synced``: ``target = db.db_version``; ``ping = s.ping()``, send it while connected
     and wait until ``s.pong(ping.id)`` is not None (that is the relay's head; a lost
     connection: ping again on the next one); then wait until ``s.synced_to(target, head)``.
4. When the connection ends by a closed socket, read what is still buffered (``s.decode``,
   then ``s.receive`` of an ``error``: its ``Fail`` is the outcome) and ask
   ``s.closed(code, reason)`` about the close frame (a ``Fail`` is the outcome). However it
   ended: ``s.disconnected()`` before the next :meth:`~DeviceSession.connect`.

The ``Peer`` of this repository drives it exactly so (its protocol-rule lines are marked
``WIRING``); the loop keeps only I/O: sockets, the database calls, backoff, file watching,
the sync lock, states and stats.

Where today's ``peer.py`` rules go: ``_session``'s hello and welcome branches ->
:meth:`~DeviceSession.connect` and :meth:`~DeviceSession.handshake`; ``_site_taken`` ->
:meth:`~DeviceSession.handshake` (``site_forbidden``); ``_pusher``'s round ->
:meth:`~DeviceSession.push_round`; ``_receiver``'s branches -> :meth:`~DeviceSession.receive`
and :meth:`~DeviceSession.merged`; ``_refusal_left``'s close-frame rule ->
:meth:`~DeviceSession.closed`; ``_relay_head_now``'s ids and ``_pongs`` ->
:meth:`~DeviceSession.ping` and :meth:`~DeviceSession.pong`; ``_update_synced`` ->
:attr:`~DeviceSession.synced`; ``_wait_synced``'s test -> :meth:`~DeviceSession.synced_to`;
``Peer.epoch``, ``push_upto``, ``pull_upto``, ``relay_head``, ``local_sealed``, ``site_id``
-> the session's attributes of the same names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from . import protocol as p
from .change import Change
from .errors import CrsyncError, ProtocolError

# ---------------------------------------------------------------------------- actions


@attrs.frozen
class Send:
    """Send this message to the relay."""

    message: p.Message


@attrs.frozen
class ResetPositions:
    """Forget the recorded positions with the relay; record ``epoch`` (a new, reset or restored
    store). ``old_epoch``, ``head`` and ``went_back`` are for the log."""

    epoch: str
    old_epoch: str
    head: int
    went_back: bool


@attrs.frozen
class RecordPush:
    """Record that the relay holds every local change up to ``upto`` (under ``epoch``)."""

    epoch: str
    upto: int


@attrs.frozen
class ClearFullPush:
    """A site reset's full-push request ``token`` is done: clear it."""

    token: str


@attrs.frozen
class ResetSite:
    """Give the database a new site id, then call :meth:`DeviceSession.site_reset`."""

    reason: str


@attrs.frozen
class Reconnect:
    """Close this connection and open a new one at once."""

    reason: str


@attrs.frozen
class Fail:
    """End the connection with ``error``; ``fatal``: stop the peer (retrying cannot help)."""

    error: CrsyncError
    fatal: bool


@attrs.frozen
class AwaitAck:
    """Wait until :attr:`DeviceSession.push_upto` reaches ``upto`` (one unit in flight)."""

    upto: int


@attrs.frozen
class MergeUnit:
    """Merge the relay's unit and record relay version ``upto`` (under ``epoch``) in the same
    transaction; then call :meth:`DeviceSession.merged`. ``staged``: ``changes`` is the unit's
    last part; the parts staged before it (:class:`StagePart`) merge with it as one unit, in
    the same transaction that clears the staging. ``progress``: ``(done, total)`` for
    ``on_progress`` once the merge is durable (see :meth:`DeviceSession.progress`)."""

    changes: Sequence[Change]
    epoch: str
    upto: int
    staged: bool = False
    progress: tuple[int, int] = attrs.field(default=(0, 0), eq=False)


@attrs.frozen
class StagePart:
    """Keep this part (``more`` true) of a multi-part catch-up unit durably (docs/protocol.md
    rule 10), so that a dropped connection resumes the unit; then report ``progress``."""

    epoch: str
    part: p.Changes
    progress: tuple[int, int] = attrs.field(default=(0, 0), eq=False)


@attrs.frozen
class DropStaged:
    """Forget the staged parts of a unit: the relay did not resume it."""


@attrs.frozen
class ApplyHorizon:
    """The relay announced ``horizon`` (under ``epoch``): record it and compact the
    tombstones below it (``positions.apply_horizon``)."""

    epoch: str
    horizon: int


@attrs.frozen
class StagedUnit:
    """What a device holds of a multi-part unit it was receiving (``crsync_staged``): the
    unit's epoch and ``(base, upto]``, the cells held, and the key ``(table, pk, cid)`` of the
    last change held."""

    epoch: str
    base: int
    upto: int
    cells: int
    last: tuple[str, bytes, str]


Action = (
    Send
    | ResetPositions
    | RecordPush
    | ClearFullPush
    | ResetSite
    | Reconnect
    | Fail
    | AwaitAck
    | MergeUnit
    | StagePart
    | DropStaged
    | ApplyHorizon
)


@attrs.frozen
class Stored:
    """The positions recorded with this relay store (``crsync_peers``)."""

    epoch: str = ""
    push_upto: int = 0
    pull_upto: int = 0


_FATAL = frozenset(c.value for c in p.FATAL_FOR_PEER)
_NO_FULL_PUSH_YET = 1 << 62


def _fail(msg: p.Error) -> Fail:
    return Fail(p.error_from(msg), msg.code in _FATAL)


class DeviceSession:
    """The sync rules of a device with one relay store (see the module docstring)."""

    def __init__(
        self,
        store: str,
        token: str | None,
        *,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        batch_cells: int = 5000,
    ) -> None:
        self.store = store
        self.token = token
        self.max_frame = max_frame
        self.batch_cells = batch_cells
        self.site_id = b""
        self.epoch = ""
        self.push_upto = 0  # local version the relay holds everything up to
        self.pull_upto = 0  # relay version merged here
        self.relay_head = 0
        self.local_sealed = 0  # last local version a push round looked at
        self.connected = False  # the current connection got the relay's welcome
        self.full_push = False  # the next push round pushes every site's changes
        self.full_push_next = False  # a site reset asks the next connection for a full push
        self.full_push_token: str | None = None  # a site reset's persisted full-push request
        self.site_resets_refused = 0
        self._stored = Stored()
        self._hello_schema: Mapping[str, p.TableSchema] = {}
        self._full_push_until = _NO_FULL_PUSH_YET
        self._conn = p.PeerConnection(max_frame)
        self._batch = 0
        self._resume_cells = 0
        self._unit_upto: int | None = None  # the upto of the unit being received
        self._merging: int | None = None  # the upto of the unit being merged
        self._pongs: dict[int, int] = {}
        self._ping_ids = 0
        self._unawaited: set[int] = set()  # pings whose answer nobody takes (the horizon's)
        self.horizon: int | None = None  # the relay's horizon as last heard
        self._staged: StagedUnit | None = None  # held durably when this connection started
        self._resume: p.Resume | None = None  # what the hello asked to resume
        self._unit_staged = False  # the unit being received has parts staged
        # Progress of the current catch-up (see progress()).
        self._done = 0  # cells merged or staged since the welcome (resumed ones included)
        self._done0 = 0  # cells held at the welcome (a resumed unit's)
        self._remaining: int | None = None
        self._cursor0 = 0  # pull_upto at the welcome
        self._head0 = 0  # the relay's head at the welcome: merged up to it, the catch-up is done

    # ------------------------------------------------------------------ connection

    def connect(
        self,
        stored: Stored,
        site: bytes,
        site_key: bytes | None,
        full_push_token: str | None,
        schema: Mapping[str, p.TableSchema],
        staged: StagedUnit | None = None,
    ) -> p.Hello:
        """A new connection: what is recorded, the database's site (it may have changed since
        the last connection: a copied file, ``reset-site``), its pending full-push request, its
        replicated schema and the unit it holds in part (``positions.staged``), if any.
        Returns the hello to send (with ``resume`` when the staged unit continues from the
        recorded position)."""
        self.disconnected()
        self._conn = p.PeerConnection(self.max_frame)
        self._stored = stored
        self.site_id = site
        self.full_push_token = full_push_token
        self._full_push_until = _NO_FULL_PUSH_YET
        self._hello_schema = dict(schema)
        self._batch = 0
        self._staged = staged
        self._resume = None
        self._resume_cells = 0
        if (
            staged is not None
            and stored.epoch
            and staged.epoch == stored.epoch
            and staged.base == stored.pull_upto
            and staged.upto > staged.base
        ):
            self._resume = p.Resume(staged.upto, *staged.last)
            self._resume_cells = staged.cells
        return p.Hello(
            p.PROTOCOL_VERSION,
            self.store,
            site,
            self._hello_schema,
            stored.pull_upto if stored.epoch else 0,
            stored.epoch,
            self.token,
            site_key,
            self._resume,
        )

    def decode(self, data: bytes | bytearray | memoryview | str) -> p.Message:
        """Decode a frame from the relay and check it may come now.

        Raises:
            ProtocolError: malformed or out of order (retry: a new connection).
        """
        return self._conn.receive(data)

    def needs_local_version(self, msg: p.Message) -> bool:
        """Whether :meth:`handshake` needs the database's version for this answer: a welcome
        under the recorded epoch saying the relay holds more than recorded (the database may
        have been restored from a backup)."""
        old = self._stored
        return (
            isinstance(msg, p.Welcome)
            and msg.epoch == old.epoch
            and msg.head >= old.pull_upto
            and msg.acked > old.push_upto
        )

    def handshake(self, msg: p.Message, local_version: int | None = None) -> list[Action]:
        """The relay's answer to the hello (``welcome`` or ``error``); ``local_version``: the
        database's db_version now, when :meth:`needs_local_version` says so."""
        if local_version is None and self.needs_local_version(msg):
            raise RuntimeError("handshake() needs the local version for this welcome")
        if isinstance(msg, p.Error):
            if msg.code != p.ErrorCode.SITE_FORBIDDEN.value:
                return [_fail(msg)]
            # The relay has this site id bound to another key: another file holds it (a copy
            # that connected first) or someone claimed it. Continue under a new site id,
            # pushing every change once; a fresh site refused again means something else.
            if self.site_resets_refused >= 1:
                return [Fail(ProtocolError(msg.code, msg.reason), fatal=True)]
            self.site_resets_refused += 1
            self.full_push_next = True
            return [
                ResetSite("site-bound-to-another-key"),
                Reconnect("site id bound to another device; reconnecting under a new site id"),
            ]
        if not isinstance(msg, p.Welcome):
            raise ProtocolError(p.ErrorCode.UNEXPECTED.value, "expected welcome")
        if msg.resumed and (self._resume is None or msg.epoch != self._stored.epoch):
            raise ProtocolError(
                p.ErrorCode.UNEXPECTED.value, "the relay resumed a unit this device did not name"
            )
        old = self._stored
        push_upto, pull_upto = old.push_upto, old.pull_upto
        out: list[Action] = []
        if self._staged is not None and not msg.resumed:
            out.append(DropStaged())  # the relay starts that unit over (or another epoch)
        self._staged = None
        full_push = False
        went_back = msg.epoch == old.epoch and msg.head < old.pull_upto
        if msg.epoch != old.epoch or went_back:
            # A new or reset store, or one restored from an older copy (its head is behind
            # what was merged; the relay then serves from version 0): push everything held
            # here, fetch everything it has.
            out.append(ResetPositions(msg.epoch, old.epoch, msg.head, went_back))
            push_upto = pull_upto = 0
            full_push = bool(old.epoch) or msg.head == 0
        elif local_version is not None and msg.acked > local_version:
            # The relay holds more of this site's changes than the file: it was restored from
            # a backup or copied. Writes made under this identity after the backup would be
            # shadowed forever; continue under a new site id, pushing every site's changes
            # once so that none made on the restored file is left behind.
            self.full_push_next = True
            return [
                ResetSite(f"relay-acked-{msg.acked}-beyond-local"),
                Reconnect("site id reset; reconnecting under the new identity"),
            ]
        elif msg.acked > push_upto:
            push_upto = msg.acked
            out.append(RecordPush(msg.epoch, push_upto))
        self.epoch = msg.epoch
        self.push_upto = push_upto
        self.pull_upto = pull_upto
        self.relay_head = max(msg.head, pull_upto)
        self.site_resets_refused = 0
        self.connected = True
        self.full_push = full_push or self.full_push_next or bool(self.full_push_token)
        self._done0 = 0
        if msg.resumed and self._resume is not None:
            self._unit_upto = self._resume.upto
            self._unit_staged = True
            self._done0 = self._resume_cells
        self._done = self._done0
        self._remaining = msg.remaining
        self._cursor0 = pull_upto
        self._head0 = msg.head
        if msg.horizon is not None:
            self.horizon = msg.horizon
            out.append(ApplyHorizon(msg.epoch, msg.horizon))
        return out

    def progress(self, upto: int | None = None) -> tuple[int, int]:
        """``(done, total)`` of the current catch-up, in cells: ``done`` = cells merged or
        staged since the welcome (a resumed unit's cells held at the welcome included),
        ``total`` = ``done`` at the welcome + the welcome's ``remaining`` (never below
        ``done``: changes written meanwhile arrive too), and ``done`` once the unit being
        merged (``upto``) reaches the head the relay had at the welcome: the catch-up is
        over (``remaining`` is an estimate: it counts this device's own changes too, which
        the relay does not send back).

        A relay that sends no ``remaining`` (an older one) gives no count of cells: then
        both are relay versions since the welcome, ``done`` = the merged version (``upto``:
        the unit being merged) - the cursor at the welcome and ``total`` = the relay's head
        - that cursor."""
        if self._remaining is None:
            merged = self.pull_upto if upto is None else upto
            head = max(self.relay_head, merged)
            return merged - self._cursor0, head - self._cursor0
        if upto is not None and upto >= self._head0:
            return self._done, self._done
        return self._done, max(self._done0 + self._remaining, self._done)

    def site_reset(self, site: bytes) -> None:
        """The database now has site id ``site`` (after :class:`ResetSite`)."""
        self.site_id = site
        self.full_push_next = True

    def disconnected(self) -> None:
        """The connection ended: what was half received in memory is dropped (staged parts
        are kept by the database; the next :meth:`connect` is told about them)."""
        self.connected = False
        self._unit_upto = None
        self._unit_staged = False
        self._merging = None

    def closed(self, code: int | None, reason: str) -> Fail | None:
        """The relay closed the socket with ``code`` and ``reason``: a 1008 close whose reason
        is a fatal error code is that refusal (its error frame may have been lost)."""
        if code == 1008 and reason in _FATAL:
            msg = p.Error(reason, f"the relay closed the connection ({reason})")
            return Fail(p.error_from(msg), fatal=True)
        return None

    # ------------------------------------------------------------------ pushing

    def push_round(
        self,
        sealed: int,
        changes: Sequence[Change],
        schema: Mapping[str, p.TableSchema],
        collected: Sequence[Change] = (),
    ) -> list[Action]:
        """One push round: the database's changes after :attr:`push_upto` (all sites', in
        db_version order) up to its sealed version ``sealed``, and its replicated schema now.

        ``collected``: the database's compacted tombstones as collected tombstones
        (``positions.collected_tombstones``), read when :attr:`full_push` is set: a full push
        sends them as the first parts of its first unit, so that a relay rebuilt from the
        devices gets them back. Ignored otherwise."""
        if not self.connected:
            raise RuntimeError("push_round() before the relay's welcome")
        if dict(schema) != self._hello_schema:
            # A table tracked (or migrated) while connected: announce the schema (the relay
            # checks it) before pushing its changes.
            return [Reconnect("replicated schema changed")]
        full = self.full_push
        if not full:
            changes = [c for c in changes if c.site_id == self.site_id]
        self.local_sealed = max(self.local_sealed, sealed)
        if full:  # a reset's request is cleared when the relay acknowledges this round
            self._full_push_until = sealed
        out: list[Action] = []
        if full and collected:
            # Collected tombstones carry db_version 0: they lead the first unit as parts of
            # their own (the unit's upto is its first whole transaction, or ``sealed``).
            units = p.chunk_changes(changes, self.batch_cells, self.max_frame // 2)
            first = sealed if len(units) <= 1 else units[0][0]
            pre = [
                part
                for _v, part, _more in p.chunk_changes(
                    collected, self.batch_cells, self.max_frame // 2
                )
            ]
            for i, part in enumerate(pre):
                self._batch += 1
                if i == len(pre) - 1 and not units:  # nothing else to push: one unit
                    out.append(Send(p.Push(self._batch, self.push_upto, sealed, part, False)))
                    out.append(AwaitAck(sealed))
                else:
                    out.append(Send(p.Push(self._batch, self.push_upto, first, part, True)))
        if changes:
            units = p.chunk_changes(changes, self.batch_cells, self.max_frame // 2)
            base = self.push_upto
            for i, (unit_upto, part, more) in enumerate(units):
                upto = sealed if i == len(units) - 1 else unit_upto
                self._batch += 1
                out.append(Send(p.Push(self._batch, base, upto, part, more)))
                if not more:
                    out.append(AwaitAck(upto))
                    base = upto
        elif sealed > self.push_upto:
            # Nothing of this site's to push (other sites' changes, or none): the position
            # moves on without the relay.
            out.append(RecordPush(self.epoch, sealed))
            self.push_upto = sealed
        if full and self.full_push_token and not changes:
            out.append(ClearFullPush(self.full_push_token))
            self.full_push_token = None
        self.full_push = False
        self.full_push_next = False
        return out

    # ------------------------------------------------------------------ receiving

    def receive(self, msg: p.Message) -> list[Action]:
        """A decoded message from the relay after the welcome.

        Raises:
            ProtocolError: the relay broke the protocol (changes not from this device's
                position, a unit whose parts disagree).
        """
        if isinstance(msg, p.Error):
            return [_fail(msg)]
        if isinstance(msg, p.Ack):
            return self._ack(msg)
        if isinstance(msg, p.Changes):
            return self._changes(msg)
        if isinstance(msg, p.Pong):
            if msg.id in self._unawaited:
                self._unawaited.discard(msg.id)
            else:
                self._pongs[msg.id] = msg.head
            self.relay_head = max(self.relay_head, msg.head)
            if msg.horizon is not None and (self.horizon is None or msg.horizon > self.horizon):
                self.horizon = msg.horizon
                return [ApplyHorizon(self.epoch, msg.horizon)]
            return []
        raise ProtocolError(p.ErrorCode.UNEXPECTED.value, f"a relay may not send {msg.TYPE!r} now")

    def _ack(self, msg: p.Ack) -> list[Action]:
        out: list[Action] = []
        if msg.upto > self.push_upto:  # acks never move the position back
            out.append(RecordPush(self.epoch, msg.upto))
            if self.full_push_token and msg.upto >= self._full_push_until:
                out.append(ClearFullPush(self.full_push_token))
                self.full_push_token = None
            self.push_upto = msg.upto
        self.relay_head = max(self.relay_head, msg.head)
        return out

    def _changes(self, msg: p.Changes) -> list[Action]:
        if self._merging is not None:
            raise RuntimeError("changes were fed before the previous unit was merged")
        if msg.base != self.pull_upto:
            raise ProtocolError(
                p.ErrorCode.UNEXPECTED.value,
                f"relay sent changes from version {msg.base}, expected {self.pull_upto}",
            )
        if msg.upto < msg.base or (self._unit_upto is not None and msg.upto != self._unit_upto):
            raise ProtocolError(
                p.ErrorCode.UNEXPECTED.value,
                f"relay sent changes up to version {msg.upto} in a unit from {msg.base}"
                + ("" if self._unit_upto is None else f" up to {self._unit_upto}"),
            )
        self._done += len(msg.changes)
        if msg.more:
            # A part of a multi-part unit: kept durably (rule 10), not in memory.
            self._unit_upto = msg.upto
            self._unit_staged = True
            return [StagePart(self.epoch, msg, self.progress())]
        staged = self._unit_staged
        unit = list(msg.changes)
        self._unit_upto, self._unit_staged = None, False
        self._merging = msg.upto
        return [MergeUnit(unit, self.epoch, msg.upto, staged, self.progress(msg.upto))]

    def merged(self) -> list[Action]:
        """The unit of the last :class:`MergeUnit` is merged and its version recorded."""
        upto = self._merging
        if upto is None:
            raise RuntimeError("merged() without a unit being merged")
        self._merging = None
        self.pull_upto = upto
        self.relay_head = max(self.relay_head, upto)
        return [Send(p.Received(upto))]

    # ------------------------------------------------------------------ synced

    @property
    def synced(self) -> bool:
        """Connected, caught up with the relay's head, and nothing sealed left to push."""
        return (
            self.connected
            and self.pull_upto >= self.relay_head
            and self.push_upto >= self.local_sealed
        )

    def ping(self, *, answer: bool = True) -> p.Ping:
        """A ping asking the relay for its head (a new id each call). ``answer`` False: the
        pong is only for its head and horizon (handled as they come), nobody takes it with
        :meth:`pong`."""
        self._ping_ids += 1
        if not answer:
            self._unawaited.add(self._ping_ids)
        return p.Ping(self._ping_ids)

    def pong(self, ping_id: int) -> int | None:
        """The head the relay answered ping ``ping_id`` with (taken once), or None yet."""
        return self._pongs.pop(ping_id, None)

    def synced_to(self, local_version: int, relay_head: int) -> bool:
        """Every local change up to ``local_version`` is acknowledged and everything up to
        relay version ``relay_head`` is merged (``wait_synced``)."""
        return self.push_upto >= local_version and self.pull_upto >= relay_head


__all__ = [
    "Action",
    "AwaitAck",
    "ClearFullPush",
    "DeviceSession",
    "Fail",
    "MergeUnit",
    "Reconnect",
    "RecordPush",
    "ResetPositions",
    "ResetSite",
    "Send",
    "Stored",
]
