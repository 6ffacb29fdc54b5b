"""The crsync wire protocol, sans I/O: message types, encoding, and per-connection order rules.

Every message is one WebSocket binary frame holding one msgpack map. ``docs/protocol.md`` is the
language-neutral description; this module is its reference implementation.

Rules:

1. A connection starts with ``hello`` from the peer. The relay answers ``welcome`` or ``error``
   (and closes). Nothing else may be sent before ``welcome``.
2. After ``welcome``, the peer sends ``push`` (its own changes, whole transactions: all changes
   of every local db_version in ``(base, upto]``), ``received`` (the relay version it has merged
   and recorded) and ``ping``. The relay sends ``ack`` (cumulative: the relay durably holds the
   peer's changes up to ``upto``), ``changes`` (catch-up and live broadcast: all changes of the
   relay versions in ``(base, upto]`` not authored by the peer), ``pong`` and ``error``.
3. A ``push`` or ``changes`` message with ``more = true`` is part of a larger unit: the receiver
   buffers parts until the part with ``more = false`` and applies the unit atomically.
4. An ``error`` carries a stable ``code`` (see :class:`ErrorCode`) and a human-readable
   ``reason``; the sender closes the connection after it.
"""

from __future__ import annotations

import enum
import gc
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import msgpack

from .change import COLLECTED_SITE, Change, validate_changes
from .errors import CrsyncError, InvalidChangeError, ProtocolError

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
MAX_HELLO_BYTES = 256 * 1024
"""Largest ``hello`` frame a relay reads. A hello comes before authentication, so it is capped
small (a schema of a few thousand column names fits); decoded msgpack takes at most about 64
bytes of memory per byte of frame, so an unauthenticated frame costs at most ~16 MiB."""
MAX_ECHO = 100
"""Longest excerpt of a value received from the other side that errors and logs quote."""


def quote(value: object, limit: int = MAX_ECHO) -> str:
    """``repr(value)`` cut to ``limit`` characters: for error reasons and log lines that quote
    what the other side sent (never an unbounded copy of an attacker's string)."""
    if isinstance(value, (str, bytes)) and len(value) > limit:
        value = value[: limit + 1]  # repr of a huge string would copy all of it first
    text = repr(value)
    if len(text) > limit:
        return text[: limit - 3] + "..."
    return text


class ErrorCode(enum.StrEnum):
    """Stable error codes of ``error`` messages."""

    BAD_FRAME = "bad_frame"  # not msgpack, not a map, missing or mistyped fields
    UNKNOWN_TYPE = "unknown_type"
    UNEXPECTED = "unexpected_message"  # a valid message at the wrong time
    UNSUPPORTED_VERSION = "unsupported_version"
    FRAME_TOO_LARGE = "frame_too_large"
    UNAUTHORIZED = "unauthorized"  # missing or invalid token
    TOKEN_EXPIRED = "token_expired"
    FORBIDDEN = "forbidden"  # valid token, store not in its scope
    BAD_STORE = "bad_store"  # store id not acceptable
    SCHEMA_MISMATCH = "schema_mismatch"
    INVALID_CHANGES = "invalid_changes"
    INTERNAL = "internal"
    SHUTTING_DOWN = "shutting_down"
    OVERLOADED = "overloaded"
    QUOTA_EXCEEDED = "quota_exceeded"  # the store is over its size quota: pushes refused
    SITE_FORBIDDEN = "site_forbidden"  # the site id is bound to another device's site key


RETRYABLE = frozenset({ErrorCode.INTERNAL, ErrorCode.SHUTTING_DOWN, ErrorCode.OVERLOADED})
FATAL_FOR_PEER = frozenset(set(ErrorCode) - RETRYABLE)
"""Errors a peer must not retry: retrying cannot succeed until a person acts."""


@attrs.frozen
class TableSchema:
    """The replicated schema of one table: primary-key columns (in order) and other columns,
    and what the table accepts: columns declared NOT NULL, and whether the key is SQLite's
    rowid (an ``INTEGER PRIMARY KEY``: integer values only). A relay refuses values that no
    announcing device can store."""

    pk: tuple[str, ...]
    columns: tuple[str, ...]
    notnull: tuple[str, ...] = ()
    integer_key: bool = False


@attrs.frozen
class Hello:
    """Peer -> relay: the first message."""

    TYPE: ClassVar[str] = "hello"
    version: int
    store: str
    site: bytes
    schema: Mapping[str, TableSchema]
    cursor: int  # last relay version merged (under ``epoch``), 0 for none
    epoch: str  # relay store epoch the cursor belongs to, "" for none
    token: str | None
    # A secret the device keeps beside its site id: the relay binds the site id to it on first
    # use, so no other client can speak for this site (None: an older client, not bound).
    site_key: bytes | None = None
    # A catch-up unit the device was receiving in parts when the last connection dropped, and
    # holds durably: continue it instead of sending it again (None: nothing to resume).
    resume: Resume | None = None


@attrs.frozen
class Resume:
    """Where a device's half-received catch-up unit stands: the unit's ``upto`` (one relay
    version, read in parts) and the key ``(table, pk, cid)`` of the last change it holds."""

    upto: int
    table: str
    pk: bytes
    cid: str


@attrs.frozen
class Welcome:
    """Relay -> peer: the handshake succeeded."""

    TYPE: ClassVar[str] = "welcome"
    version: int
    epoch: str
    head: int  # the store's latest relay version
    acked: int  # the peer's local version the relay holds everything up to (this epoch)
    # The store's horizon: every relay version up to it is stable (see docs/concepts.md);
    # None from a relay that does not collect tombstones.
    horizon: int | None = None
    # How many changes the relay holds after the hello's cursor (for progress; an estimate:
    # changes written meanwhile add to it). None: not counted.
    remaining: int | None = None
    # True: the relay continues the unit named in ``hello.resume``: the next ``changes`` is that
    # unit's next part (``base`` = the cursor, ``upto`` = ``resume.upto``).
    resumed: bool = False


@attrs.frozen
class Push:
    """Peer -> relay: local changes of versions ``(base, upto]``."""

    TYPE: ClassVar[str] = "push"
    batch: int
    base: int
    upto: int
    changes: Sequence[Change]
    more: bool = False


@attrs.frozen
class Ack:
    """Relay -> peer: everything the peer pushed up to ``upto`` is durable on the relay."""

    TYPE: ClassVar[str] = "ack"
    batch: int
    upto: int
    head: int


@attrs.frozen
class Changes:
    """Relay -> peer: changes of relay versions ``(base, upto]`` (catch-up or live)."""

    TYPE: ClassVar[str] = "changes"
    base: int
    upto: int
    changes: Sequence[Change]
    more: bool = False


@attrs.frozen
class Received:
    """Peer -> relay: the peer merged and recorded everything up to relay version ``upto``."""

    TYPE: ClassVar[str] = "received"
    upto: int


@attrs.frozen
class Ping:
    """Peer -> relay: ask for the store's head (used by ``wait_synced``)."""

    TYPE: ClassVar[str] = "ping"
    id: int


@attrs.frozen
class Pong:
    """Relay -> peer: answer to :class:`Ping`."""

    TYPE: ClassVar[str] = "pong"
    id: int
    head: int
    horizon: int | None = None  # the store's horizon now (see :class:`Welcome`)


@attrs.frozen
class Error:
    """Either way: a stable code and a human-readable reason; the connection then closes."""

    TYPE: ClassVar[str] = "error"
    code: str
    reason: str


Message = Hello | Welcome | Push | Ack | Changes | Received | Ping | Pong | Error

# ---------------------------------------------------------------------------- encoding


def encode(msg: Message) -> bytes:
    """Encode a message as one msgpack map (a binary WebSocket frame)."""
    body: dict[str, Any] = {"t": msg.TYPE}
    if isinstance(msg, Hello):
        body.update(
            v=msg.version,
            store=msg.store,
            site=msg.site,
            schema={t: _schema_body(s) for t, s in msg.schema.items()},
            cursor=msg.cursor,
            epoch=msg.epoch,
            token=msg.token,
        )
        if msg.site_key is not None:
            body["site_key"] = msg.site_key
        if msg.resume is not None:
            r = msg.resume
            body["resume"] = {"upto": r.upto, "after": [r.table, r.pk, r.cid]}
    elif isinstance(msg, Welcome):
        body.update(v=msg.version, epoch=msg.epoch, head=msg.head, acked=msg.acked)
        if msg.horizon is not None:
            body["horizon"] = msg.horizon
        if msg.remaining is not None:
            body["remaining"] = msg.remaining
        if msg.resumed:
            body["resumed"] = True
    elif isinstance(msg, Push):
        body.update(
            batch=msg.batch,
            base=msg.base,
            upto=msg.upto,
            changes=list(msg.changes),  # a Change is a tuple: packed as the 9-array
            more=msg.more,
        )
    elif isinstance(msg, Ack):
        body.update(batch=msg.batch, upto=msg.upto, head=msg.head)
    elif isinstance(msg, Changes):
        body.update(
            base=msg.base,
            upto=msg.upto,
            changes=list(msg.changes),  # a Change is a tuple: packed as the 9-array
            more=msg.more,
        )
    elif isinstance(msg, Received):
        body.update(upto=msg.upto)
    elif isinstance(msg, Ping):
        body.update(id=msg.id)
    elif isinstance(msg, Pong):
        body.update(id=msg.id, head=msg.head)
        if msg.horizon is not None:
            body["horizon"] = msg.horizon
    elif isinstance(msg, Error):
        body.update(code=msg.code, reason=msg.reason)
    else:  # pragma: no cover - exhaustive over Message
        raise TypeError(f"not a message: {msg!r}")
    data: bytes = msgpack.packb(body, use_bin_type=True, use_single_float=False)
    return data


def _bad(reason: str) -> ProtocolError:
    return ProtocolError(ErrorCode.BAD_FRAME.value, reason)


def _get(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise _bad(f"{quote(body.get('t'))} message without {key!r}")
    value = body[key]
    if isinstance(value, bool) and kind is int:
        raise _bad(f"{key!r} must be an integer")
    if not isinstance(value, kind):
        raise _bad(f"{key!r} has the wrong type ({type(value).__name__})")
    return value


def _version(body: Mapping[str, Any], key: str) -> int:
    v: int = _get(body, key, int)
    if v < 0 or v >= 1 << 63:
        raise _bad(f"{key!r} out of range")
    return v


def _optional_version(body: Mapping[str, Any], key: str) -> int | None:
    return None if body.get(key) is None else _version(body, key)


def _resume(raw: Any) -> Resume | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _bad("'resume' must be a map")
    after = raw.get("after")
    if (
        not isinstance(after, list)
        or len(after) != 3
        or not isinstance(after[0], str)
        or not isinstance(after[1], bytes)
        or not isinstance(after[2], str)
    ):
        raise _bad("'resume.after' must be [table (str), pk (bin), cid (str)]")
    return Resume(_version(raw, "upto"), after[0], after[1], after[2])


def _changes(body: Mapping[str, Any]) -> list[Change]:
    rows = _get(body, "changes", list)
    try:
        return validate_changes(rows)
    except InvalidChangeError as exc:
        raise ProtocolError(ErrorCode.INVALID_CHANGES.value, str(exc)) from None


def _schema_body(s: TableSchema) -> dict[str, Any]:
    body: dict[str, Any] = {"pk": list(s.pk), "columns": list(s.columns)}
    if s.notnull:  # optional fields: absent when empty (older peers send neither)
        body["notnull"] = list(s.notnull)
    if s.integer_key:
        body["intkey"] = True
    return body


def _schema(raw: Any) -> dict[str, TableSchema]:
    if not isinstance(raw, dict):
        raise _bad("'schema' must be a map")
    out = {}
    for table, s in raw.items():
        if not isinstance(table, str) or not isinstance(s, dict):
            raise _bad("'schema' entries must map a table name to {pk, columns}")
        pk, cols = s.get("pk"), s.get("columns")
        if not (isinstance(pk, list) and pk and all(isinstance(x, str) for x in pk)):
            raise _bad(f"schema of {quote(table)}: 'pk' must be a non-empty list of names")
        if not (isinstance(cols, list) and all(isinstance(x, str) for x in cols)):
            raise _bad(f"schema of {quote(table)}: 'columns' must be a list of names")
        notnull, intkey = s.get("notnull", []), s.get("intkey", False)
        if not (isinstance(notnull, list) and all(isinstance(x, str) for x in notnull)):
            raise _bad(f"schema of {quote(table)}: 'notnull' must be a list of names")
        if not isinstance(intkey, bool):
            raise _bad(f"schema of {quote(table)}: 'intkey' must be a boolean")
        out[table] = TableSchema(tuple(pk), tuple(cols), tuple(notnull), intkey)
    return out


def _unit(body: Mapping[str, Any]) -> tuple[int, int, list[Change], bool]:
    """The fields a ``push`` and a ``changes`` message share: ``base``, ``upto``, the changes
    and ``more``."""
    return (
        _version(body, "base"),
        _version(body, "upto"),
        _changes(body),
        bool(_get(body, "more", bool)),
    )


def decode(
    data: bytes | bytearray | memoryview | str, max_size: int = DEFAULT_MAX_FRAME
) -> Message:
    """Decode one frame.

    The cyclic garbage collector is paused meanwhile: a frame of changes allocates tens of
    thousands of lists, tuples and values that form no cycles, and letting the collector run
    in between rescans every change a receiver already buffered (it halved the decode rate
    of a multi-part unit).

    Raises:
        ProtocolError: with code ``bad_frame``, ``frame_too_large``, ``unknown_type`` or
            ``invalid_changes``.
    """
    was = gc.isenabled()
    gc.disable()
    try:
        return _decode(data, max_size)
    finally:
        if was:
            gc.enable()


def _decode(data: bytes | bytearray | memoryview | str, max_size: int) -> Message:
    if isinstance(data, str):
        raise _bad("text frames are not part of the protocol; send binary frames")
    if len(data) > max_size:
        raise ProtocolError(
            ErrorCode.FRAME_TOO_LARGE.value, f"frame of {len(data)} bytes exceeds {max_size}"
        )
    try:
        body = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise _bad(f"not a msgpack document: {exc}") from None
    if not isinstance(body, dict):
        raise _bad("a frame must be a msgpack map")
    t = body.get("t")
    if t == "hello":
        token = body.get("token")
        if token is not None and not isinstance(token, str):
            raise _bad("'token' must be a string")
        site = _get(body, "site", bytes)
        if len(site) != 16:
            raise _bad("'site' must be 16 bytes")
        if site == COLLECTED_SITE:
            raise _bad("'site' must not be 16 zero bytes (the author of collected tombstones)")
        site_key = body.get("site_key")
        if site_key is not None and (
            not isinstance(site_key, bytes) or not 16 <= len(site_key) <= 64
        ):
            raise _bad("'site_key' must be 16 to 64 bytes")
        return Hello(
            version=_version(body, "v"),
            store=_get(body, "store", str),
            site=site,
            schema=_schema(body.get("schema", {})),
            cursor=_version(body, "cursor"),
            epoch=_get(body, "epoch", str),
            token=token,
            site_key=site_key,
            resume=_resume(body.get("resume")),
        )
    if t == "welcome":
        resumed = body.get("resumed", False)
        if not isinstance(resumed, bool):
            raise _bad("'resumed' must be a boolean")
        return Welcome(
            _version(body, "v"),
            _get(body, "epoch", str),
            _version(body, "head"),
            _version(body, "acked"),
            _optional_version(body, "horizon"),
            _optional_version(body, "remaining"),
            resumed,
        )
    if t == "push":
        return Push(_version(body, "batch"), *_unit(body))
    if t == "ack":
        return Ack(_version(body, "batch"), _version(body, "upto"), _version(body, "head"))
    if t == "changes":
        return Changes(*_unit(body))
    if t == "received":
        return Received(_version(body, "upto"))
    if t == "ping":
        return Ping(_version(body, "id"))
    if t == "pong":
        return Pong(
            _version(body, "id"), _version(body, "head"), _optional_version(body, "horizon")
        )
    if t == "error":
        return Error(_get(body, "code", str), _get(body, "reason", str))
    raise ProtocolError(ErrorCode.UNKNOWN_TYPE.value, f"unknown message type {quote(t)}")


# ---------------------------------------------------------------------------- order rules

_PEER_SENDS = (Push, Received, Ping)
_RELAY_SENDS = (Ack, Changes, Pong, Error)


class _Connection:
    """One side of a connection: decodes what the other side sends, checking its order."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        """Start waiting for the other side's first message."""
        self.max_frame = max_frame


class RelayConnection(_Connection):
    """Relay side of one connection: checks the order of what the peer sends."""

    hello: Hello | None = None

    def receive(self, data: bytes | bytearray | memoryview | str) -> Message:
        """Decode a frame from the peer; raise ProtocolError if malformed or out of order."""
        if self.hello is None:
            # Before authentication: capped small, checked before any decoding.
            cap = min(MAX_HELLO_BYTES, self.max_frame)
            if not isinstance(data, str) and len(data) > cap:
                raise ProtocolError(
                    ErrorCode.FRAME_TOO_LARGE.value,
                    f"the first frame (hello) of {len(data)} bytes exceeds {cap}",
                )
            msg = decode(data, cap)
            if not isinstance(msg, Hello):
                raise ProtocolError(ErrorCode.UNEXPECTED.value, "the first message must be hello")
            if msg.version != PROTOCOL_VERSION:
                raise ProtocolError(
                    ErrorCode.UNSUPPORTED_VERSION.value,
                    f"protocol version {msg.version} is not supported; this relay speaks "
                    f"version {PROTOCOL_VERSION}",
                )
            self.hello = msg
            return msg
        msg = decode(data, self.max_frame)
        if not isinstance(msg, _PEER_SENDS):
            raise ProtocolError(ErrorCode.UNEXPECTED.value, f"a peer may not send {msg.TYPE!r} now")
        return msg


class PeerConnection(_Connection):
    """Peer side of one connection: checks the order of what the relay sends."""

    welcome: Welcome | None = None

    def receive(self, data: bytes | bytearray | memoryview | str) -> Message:
        """Decode a frame from the relay; raise ProtocolError if malformed or out of order."""
        msg = decode(data, self.max_frame)
        if isinstance(msg, Error):
            return msg
        if self.welcome is None:
            if not isinstance(msg, Welcome):
                raise ProtocolError(ErrorCode.UNEXPECTED.value, "expected welcome")
            self.welcome = msg
            return msg
        if not isinstance(msg, _RELAY_SENDS):
            raise ProtocolError(
                ErrorCode.UNEXPECTED.value, f"a relay may not send {msg.TYPE!r} now"
            )
        return msg


def chunk_changes(
    changes: Sequence[Change], max_cells: int = 5000, max_bytes: int = 8 * 1024 * 1024
) -> list[tuple[int, list[Change], bool]]:
    """Split changes ordered by db_version into frames of whole versions where possible.

    Returns:
        ``(upto, part, more)`` triples: ``upto`` is the last db_version fully contained when
        ``more`` is false; a version larger than one frame is split into parts with ``more``
        true on all but its last part.
    """
    out: list[tuple[int, list[Change], bool]] = []
    cur: list[Change] = []
    size = 0
    i = 0
    n = len(changes)
    costs = _costs(changes)
    while i < n:
        v = changes[i].db_version
        j = i
        vsize = 0
        while j < n and changes[j][5] == v:
            vsize += costs[j]
            j += 1
        group = changes[i:j]
        if cur and (len(cur) + len(group) > max_cells or size + vsize > max_bytes):
            out.append((cur[-1].db_version, cur, False))
            cur, size = [], 0
        if len(group) > max_cells or vsize > max_bytes:
            part: list[Change] = []
            psize = 0
            for k in range(i, j):
                c, cost = changes[k], costs[k]
                if part and (len(part) >= max_cells or psize + cost > max_bytes):
                    out.append((v, part, True))
                    part, psize = [], 0
                part.append(c)
                psize += cost
            out.append((v, part, False))
        else:
            cur.extend(group)
            size += vsize
        i = j
    if cur:
        out.append((cur[-1].db_version, cur, False))
    return out


def split_frames(
    changes: Sequence[Change], max_cells: int = 5000, max_bytes: int = 8 * 1024 * 1024
) -> list[list[Change]]:
    """Split one unit into frame-sized parts (at least one part, possibly empty)."""
    costs = _costs(changes)
    if len(changes) <= max_cells and sum(costs) <= max_bytes:
        return [list(changes)]  # what the loop below returns when nothing needs splitting
    parts: list[list[Change]] = [[]]
    size = 0
    for c, cost in zip(changes, costs, strict=True):
        if parts[-1] and (len(parts[-1]) >= max_cells or size + cost > max_bytes):
            parts.append([])
            size = 0
        parts[-1].append(c)
        size += cost
    return parts


def _cost(c: Change) -> int:
    """Bytes a change is counted for in a frame's budget (an estimate of its encoding)."""
    v = c.val
    return (
        64 + len(c.pk) + len(c.table) + len(c.cid) + (len(v) if isinstance(v, str | bytes) else 9)
    )


def _costs(changes: Sequence[Change]) -> list[int]:
    """:func:`_cost` of every change (one pass, no call per change)."""
    return [
        64
        + len(c[1])
        + len(c[0])
        + len(c[2])
        + (len(c[3]) if type(c[3]) is str or type(c[3]) is bytes else 9)
        for c in changes
    ]


def error_from(msg: Error) -> CrsyncError:
    """The exception a peer raises for a relay's error message."""
    from .errors import AuthError, SchemaMismatchError

    if msg.code in (
        ErrorCode.UNAUTHORIZED.value,
        ErrorCode.TOKEN_EXPIRED.value,
        ErrorCode.FORBIDDEN.value,
    ):
        return AuthError(f"relay refused the token ({msg.code}): {msg.reason}")
    if msg.code == ErrorCode.SCHEMA_MISMATCH.value:
        return SchemaMismatchError(msg.reason)
    return ProtocolError(msg.code, msg.reason)
