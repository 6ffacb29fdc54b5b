"""The relay's side of one connection, sans I/O: events in, actions out.

:class:`RelaySession` holds every sync rule the relay applies to one peer connection (the
handshake order, where catch-up resumes, what an epoch change means, multi-part units, acks,
``received`` positions, pongs, refusals) and does no I/O: it imports no sqlite3, trio or
websockets. The relay's connection handler (``server/crsync_relay/session.py``) is a thin trio
loop around it: it reads frames, feeds what it read and what the store did to the session, and
performs the actions the session returns, in order, before feeding the next event.

How the loop drives it (one object per connection)::

    s = RelaySession(max_frame=..., batch_cells=..., max_unit_cells=..., max_unit_bytes=...)
    # handshake: read one frame of at most s.frame_cap bytes
    actions = s.receive(s.decode(raw), len(raw))      # -> [Admit(hello)]
    # Admit: check the store id, verify the token, count the connection, open the store, then
    # under the store's write lock (stopping at the first problem): is hello.site the relay's
    # own site? bind the site to its key; check the schema; read the site's positions.
    actions = s.admitted(StoreView(...))               # -> [Send(Welcome)] (or raises)
    # then two tasks share s:
    #   receive task: raw = await ws.recv(); s.store_advanced(store.head)
    #                 for a in s.receive(s.decode(raw), len(raw)): perform a
    #       CheckQuota -> refuse (quota_exceeded) a store over its byte quota
    #       MergeUnit  -> merge the unit durably; then perform s.unit_merged(new_head)
    #       RecordReceived -> record the peer's position
    #       Send       -> send the message
    #   send task:    while True: r = s.next_read(); if r is None: wait for the store's head to
    #                 move, s.store_advanced(head); else read a page at r.cursor (r.resume) and
    #                 send every Send of s.page_read(changes, upto, resume)
    # any refusal (an exception with a code), a ProtocolError raised by the session, or an
    # internal failure: perform s.fail(code, reason) -> Close: send Error, close the socket.

Rules (``docs/protocol.md`` says them language-neutrally):

* Hello first, once; nothing is sent before ``welcome``; the store is opened and the token
  checked only after a well-formed hello of at most :data:`crsync.protocol.MAX_HELLO_BYTES`.
* Resume: a hello's ``cursor`` is honoured only under the store's current epoch and when it is
  not past the store's head; otherwise catch-up starts at 0. A hello's ``resume`` (a catch-up
  unit the device holds part of) is continued (``welcome.resumed``) only when the cursor is
  honoured and the first version after it holding anything is still the unit's ``upto``; the
  first read then starts after the named key. ``welcome.horizon``, ``welcome.remaining`` and
  ``pong.horizon`` carry what the loop found in the store (:class:`StoreView`).
  ``welcome.acked`` is the site's recorded push position under the current epoch, 0 after an
  epoch change (the device then pushes everything again and resets its positions).
* Multi-part units: push parts are buffered until the part with ``more = false``; the store is
  checked for its quota before the first part of a multi-part unit is buffered; a unit larger
  than ``max_unit_cells`` cells or ``max_unit_bytes`` frame bytes is refused
  (``invalid_changes``). The unit is merged as one, and acknowledged only after it is durable.
* Acks are monotonic: an ack never carries an ``upto`` below one sent before on the connection.
* ``received`` positions are recorded only when they advance, and never past what this
  connection sent (or, at the handshake, past the honoured cursor of the hello).
* Refusals end the connection: an ``error`` frame with the code, then a close (1011 for
  ``internal``, 1008 otherwise), the reason cut to :data:`MAX_REASON` characters.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from . import protocol as p
from .change import Change
from .errors import ProtocolError

MAX_REASON = 500
"""Longest reason an error frame (and the relay's log line) carries."""


# ---------------------------------------------------------------------------- actions


@attrs.frozen
class Send:
    """Send this message to the peer."""

    message: p.Message


@attrs.frozen
class Admit:
    """Authenticate the hello and open its store; then call :meth:`RelaySession.admitted`."""

    hello: p.Hello


@attrs.frozen
class CheckQuota:
    """Refuse (``quota_exceeded``) if the store is over its byte quota: a multi-part unit is
    about to be held in memory."""


@attrs.frozen
class MergeUnit:
    """Merge the peer's whole unit durably (one transaction); then call
    :meth:`RelaySession.unit_merged` with the store's new head."""

    batch: int
    upto: int
    changes: Sequence[Change]


@attrs.frozen
class RecordReceived:
    """Record that the peer merged everything up to relay version ``upto``."""

    upto: int


@attrs.frozen
class Close:
    """Send ``Error(code, reason)``, then close the socket with ``ws_code``."""

    code: str
    reason: str
    ws_code: int


@attrs.frozen
class ReadChanges:
    """Read what the peer lacks from relay version ``cursor`` (``resume``: continue a version
    read in parts); then call :meth:`RelaySession.page_read`."""

    cursor: int
    resume: tuple[int, str, bytes, str] | None


Action = Send | Admit | CheckQuota | MergeUnit | RecordReceived | Close


@attrs.frozen
class StoreView:
    """What the relay found when it opened the store for a hello (the event after
    :class:`Admit`). The loop fills the checks in this order and stops at the first that
    fails: ``own_site`` (the hello's site is the relay's reactor site: do not bind it),
    ``site_claim`` (why binding the site to its key failed), ``schema_problem``."""

    epoch: str
    head: int
    pushed_upto: int = 0  # the site's recorded push position (under ``epoch``)
    received_upto: int = 0  # the site's recorded merged relay version
    own_site: bool = False
    site_claim: str | None = None
    schema_problem: str | None = None
    # The store's horizon (None: the relay does not collect), and how many cells and collected
    # tombstones the peer has yet to receive from where its catch-up starts (see
    # :meth:`RelaySession.catch_up_from`; None: not counted).
    horizon: int | None = None
    remaining: int | None = None
    # The first relay version after the catch-up cursor holding anything (asked only for a
    # hello with ``resume``: the unit it names continues only if it is still that version).
    next_version: int | None = None


class RelayState(enum.Enum):
    """Where a connection is."""

    HELLO = "hello"  # waiting for the peer's hello
    ADMITTING = "admitting"  # hello read; token, store, site and schema being checked
    OPEN = "open"  # welcome sent: pushes, catch-up and live changes
    CLOSED = "closed"  # an error was (or is being) sent


class Refused(ProtocolError):
    """The relay refuses the peer by its rules (its site, its schema, a unit too large): not
    a malformed message, though it ends the connection the same way."""


def _unexpected(reason: str) -> ProtocolError:
    return ProtocolError(p.ErrorCode.UNEXPECTED.value, reason)


def cap_reason(reason: str) -> str:
    """An error reason cut to :data:`MAX_REASON` characters (reasons quote what peers sent;
    every quote is bounded already, this bounds their sum)."""
    return reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 3] + "..."


class RelaySession:
    """The sync rules of one peer connection on the relay (see the module docstring)."""

    def __init__(
        self,
        *,
        max_frame: int = p.DEFAULT_MAX_FRAME,
        batch_cells: int = 5000,
        max_unit_cells: int = 2_000_000,
        max_unit_bytes: int = 256 << 20,
    ) -> None:
        self.max_frame = max_frame
        self.batch_cells = batch_cells
        self.max_unit_cells = max_unit_cells
        self.max_unit_bytes = max_unit_bytes
        self.state = RelayState.HELLO
        self.hello: p.Hello | None = None
        self.epoch = ""
        self.head = 0  # the store's head as last told (store_advanced, admitted, unit_merged)
        self.sent_upto = 0  # relay version the peer was sent everything up to
        self.acked = 0  # the highest upto acknowledged on this connection
        self.received = 0  # the peer's merged relay version, as recorded
        self._conn = p.RelayConnection(max_frame)
        self._parts: list[Change] = []
        self._unit_bytes = 0
        self._merging: p.Push | None = None  # the final part of the unit being merged
        self._resume: tuple[int, str, bytes, str] | None = None
        self.horizon: int | None = None  # the store's horizon as last told
        self.resumed = False  # the hello's half-received unit is being continued

    # ------------------------------------------------------------------ frames

    @property
    def frame_cap(self) -> int:
        """Largest frame the transport should accept now: the small hello cap before the
        hello, twice ``max_frame`` after it (so that an oversized frame is refused with
        ``frame_too_large`` rather than a transport error)."""
        if self.state is RelayState.HELLO:
            return min(p.MAX_HELLO_BYTES, self.max_frame)
        return 2 * self.max_frame

    def decode(self, data: bytes | bytearray | memoryview | str) -> p.Message:
        """Decode a frame from the peer and check it may come now (safe to call from a worker
        thread once the session is open: it changes nothing then).

        Raises:
            ProtocolError: malformed, too large, or out of order.
        """
        return self._conn.receive(data)

    # ------------------------------------------------------------------ events

    def receive(self, msg: p.Message, size: int = 0) -> list[Action]:
        """A decoded message from the peer (``size``: its frame's length in bytes).

        Raises:
            ProtocolError: the message breaks the protocol here (:class:`Refused`: a unit
                larger than this relay accepts).
        """
        if self.state is RelayState.HELLO:
            if not isinstance(msg, p.Hello):
                raise _unexpected("the first message must be hello")
            self.hello = msg
            self.state = RelayState.ADMITTING
            return [Admit(msg)]
        if self.state is not RelayState.OPEN:
            raise _unexpected(f"a peer may not send {msg.TYPE!r} now")
        if isinstance(msg, p.Push):
            return self._push(msg, size)
        if isinstance(msg, p.Received):
            upto = min(msg.upto, self.sent_upto)
            if upto <= self.received:
                return []
            self.received = upto
            return [RecordReceived(upto)]
        if isinstance(msg, p.Ping):
            return [Send(p.Pong(msg.id, self.head, self.horizon))]
        raise _unexpected(f"a peer may not send {msg.TYPE!r} now")

    def _push(self, msg: p.Push, size: int) -> list[Action]:
        if self._merging is not None:
            raise RuntimeError("a push was fed before the previous unit was merged")
        out: list[Action] = []
        if not self._parts and msg.more:
            out.append(CheckQuota())  # before holding a multi-part unit in memory
        self._parts.extend(msg.changes)
        self._unit_bytes += size
        if len(self._parts) > self.max_unit_cells or self._unit_bytes > self.max_unit_bytes:
            raise Refused(
                p.ErrorCode.INVALID_CHANGES.value,
                "a multi-part push is larger than this relay accepts "
                f"({self.max_unit_cells} cells, {self.max_unit_bytes} bytes)",
            )
        if msg.more:
            return out
        unit, self._parts, self._unit_bytes = self._parts, [], 0
        self._merging = msg
        out.append(MergeUnit(msg.batch, msg.upto, unit))
        return out

    def admitted(self, view: StoreView) -> list[Action]:
        """The store is open for the hello (after :class:`Admit`): the welcome, then a
        :class:`RecordReceived` of the hello's cursor when it is honoured and past what the
        store recorded for the site.

        Raises:
            Refused: ``forbidden`` (the relay's own site), ``site_forbidden`` (the site is
                bound to another key) or ``schema_mismatch``.
        """
        if self.state is not RelayState.ADMITTING or self.hello is None:
            raise RuntimeError("admitted() without a hello being admitted")
        if view.own_site:
            raise Refused(
                p.ErrorCode.FORBIDDEN.value,
                "this site id is the relay's own (its reactor's); a device cannot use it",
            )
        if view.site_claim is not None:
            raise Refused(p.ErrorCode.SITE_FORBIDDEN.value, view.site_claim)
        if view.schema_problem is not None:
            raise Refused(p.ErrorCode.SCHEMA_MISMATCH.value, view.schema_problem)
        hello = self.hello
        same_epoch = hello.epoch == view.epoch
        self.epoch = view.epoch
        self.head = view.head
        self.sent_upto, self._resume = self.catch_up_from(view.epoch, view.head, view.next_version)
        self.resumed = self._resume is not None
        self.acked = view.pushed_upto if same_epoch else 0
        self.received = min(view.received_upto, self.sent_upto)
        self.horizon = view.horizon
        self.state = RelayState.OPEN
        out: list[Action] = []
        if self.sent_upto > self.received:
            # The honoured cursor says the device merged everything up to it (a `received`
            # the last connection may not have delivered): its position, for the horizon.
            self.received = self.sent_upto
            out.append(RecordReceived(self.sent_upto))
        welcome = p.Welcome(
            p.PROTOCOL_VERSION,
            view.epoch,
            view.head,
            self.acked,
            view.horizon,
            view.remaining,
            self.resumed,
        )
        return [Send(welcome), *out]

    def catch_up_from(
        self, epoch: str, head: int, next_version: int | None = None
    ) -> tuple[int, tuple[int, str, bytes, str] | None]:
        """Where the hello's catch-up starts on a store of ``epoch`` and ``head``: the cursor
        (the hello's under the same epoch and not past the head, else 0) and, when the hello
        names a half-received unit that still stands (rule 10: same epoch, cursor honoured,
        ``next_version`` -- the first version after the cursor holding anything -- is the
        unit's ``upto``), the key the first read continues after (else None)."""
        hello = self.hello
        if hello is None:
            raise RuntimeError("catch_up_from() before a hello")
        if hello.epoch != epoch or hello.cursor > head:
            return 0, None
        r = hello.resume
        if r is None or next_version is None or r.upto != next_version or r.upto <= hello.cursor:
            return hello.cursor, None
        return hello.cursor, (r.upto, r.table, r.pk, r.cid)

    @property
    def epoch_matched(self) -> bool:
        """The hello's epoch is the store's (its cursor and acked positions hold)."""
        return self.hello is not None and self.hello.epoch == self.epoch

    def unit_merged(self, head: int) -> list[Action]:
        """The unit of the last :class:`MergeUnit` is durable; the store's head is ``head``."""
        msg = self._merging
        if msg is None:
            raise RuntimeError("unit_merged() without a unit being merged")
        self._merging = None
        self.head = max(self.head, head)
        self.acked = max(self.acked, msg.upto)
        return [Send(p.Ack(msg.batch, self.acked, self.head))]

    def store_advanced(self, head: int, horizon: int | None = None) -> None:
        """The store's head is ``head`` now (a push of any connection, a reactor write), and
        its horizon ``horizon`` (None: not told; a horizon never moves back)."""
        self.head = max(self.head, head)
        if horizon is not None:
            self.horizon = horizon if self.horizon is None else max(self.horizon, horizon)

    def next_read(self) -> ReadChanges | None:
        """What to read for the peer next, or None: it has everything up to the head (wait
        for the head to move, then call :meth:`store_advanced`)."""
        if self.state is not RelayState.OPEN:
            return None
        if self._resume is None and self.sent_upto >= self.head:
            return None
        return ReadChanges(self.sent_upto, self._resume)

    def page_read(
        self,
        changes: Sequence[Change],
        upto: int,
        resume: tuple[int, str, bytes, str] | None,
    ) -> list[Send]:
        """A read of :meth:`next_read` returned these changes (not the peer's own) of relay
        versions up to ``upto``; ``resume`` is not None when it ended inside one version: that
        version's parts go out as one unit (``more``) until its last part."""
        self.head = max(self.head, upto)
        self._resume = resume
        parts = p.split_frames(changes, self.batch_cells, self.max_frame // 2)
        out = [
            Send(p.Changes(self.sent_upto, upto, part, i < len(parts) - 1 or resume is not None))
            for i, part in enumerate(parts)
        ]
        if resume is None:
            self.sent_upto = upto
        return out

    def fail(self, code: str, reason: str) -> Close:
        """The connection ends on a refusal or error with ``code``: what to send and how to
        close (the session is closed from now on)."""
        self.state = RelayState.CLOSED
        ws_code = 1011 if code == p.ErrorCode.INTERNAL.value else 1008
        return Close(code, cap_reason(reason), ws_code)


__all__ = [
    "MAX_REASON",
    "Action",
    "Admit",
    "CheckQuota",
    "Close",
    "MergeUnit",
    "ReadChanges",
    "RecordReceived",
    "Refused",
    "RelaySession",
    "RelayState",
    "Send",
    "StoreView",
    "cap_reason",
]
