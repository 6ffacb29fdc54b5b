"""The wire protocol without sockets: encoding, decoding, error codes and order rules."""

from __future__ import annotations

import math
import struct
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crsync import Change, ProtocolError, pack_pk
from crsync import protocol as p
from crsync.change import MAX_CLOCK
from crsync.errors import AuthError, SchemaMismatchError

SITE = bytes(range(16))
SITE2 = bytes(range(16, 32))
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1


def ch(val: Any = 1, *, db_version: int = 1, cid: str = "c", pk: Any = 1, seq: int = 0) -> Change:
    return Change("t", pack_pk([pk]), cid, val, 1, db_version, SITE, 1, seq)


VALUES: list[Any] = [
    None,
    0,
    1,
    -1,
    I64_MIN,
    I64_MAX,
    0.0,
    -0.0,
    1.5,
    math.inf,
    -math.inf,
    5e-324,
    "",
    "héllo ☃",
    "a\x00b",
    "\x00",
    b"",
    b"\x00\xff",
    bytes(range(256)) * 4096,  # 1 MiB
]


def _same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack(">d", a) == struct.pack(">d", b)  # keeps -0.0 apart from 0.0
    return bool(a == b)


def _raw(body: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(body, use_bin_type=True)
    return data


def _code(data: Any, max_size: int = p.DEFAULT_MAX_FRAME) -> str:
    with pytest.raises(ProtocolError) as info:
        p.decode(data, max_size)
    return info.value.code


HELLO = p.Hello(
    p.PROTOCOL_VERSION,
    "store-1",
    SITE,
    {"todos": p.TableSchema(("id",), ("done", "id", "title")), "x": p.TableSchema(("a", "b"), ())},
    7,
    "epoch-abc",
    "tok.en.x",
)

MESSAGES: list[p.Message] = [
    HELLO,
    p.Hello(p.PROTOCOL_VERSION, "s", SITE, {}, 0, "", None),
    p.Welcome(p.PROTOCOL_VERSION, "e", 12, 3),
    p.Push(1, 0, 5, [ch(v, seq=i) for i, v in enumerate(VALUES)], False),
    p.Push(2, 5, 9, [], True),
    p.Ack(4, I64_MAX, 0),
    p.Changes(0, 3, [ch(v, db_version=3) for v in VALUES], True),
    p.Changes(3, 3, [], False),
    p.Received(99),
    p.Ping(0),
    p.Pong(1, 2),
    p.Error("bad_frame", "reason ☃"),
]


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_every_message_type_round_trips(msg: p.Message) -> None:
    data = p.encode(msg)
    assert isinstance(data, bytes)
    out = p.decode(data)
    assert type(out) is type(msg)
    assert out == msg


@pytest.mark.parametrize("val", VALUES, ids=repr)
def test_change_values_keep_type_and_bits(val: Any) -> None:
    for msg in (p.Push(1, 0, 1, [ch(val)]), p.Changes(0, 1, [ch(val)])):
        out = p.decode(p.encode(msg))
        assert isinstance(out, p.Push | p.Changes)
        got = out.changes[0].val
        assert _same(got, val), (got, val)


def test_int64_extremes_in_every_integer_field_round_trip() -> None:
    c = Change(
        "t", pack_pk([I64_MIN, I64_MAX]), "c", I64_MIN, MAX_CLOCK, MAX_CLOCK, SITE, MAX_CLOCK,
        I64_MAX,
    )
    out = p.decode(p.encode(p.Changes(0, I64_MAX, [c])))
    assert isinstance(out, p.Changes)
    assert out.changes == [c]


@pytest.mark.parametrize("field", ["col_version", "db_version", "cl"])
def test_clocks_above_the_bound_are_invalid_changes(field: str) -> None:
    """Security review H3: a clock of 2^63-1 would freeze a cell or row for every device."""
    good = Change("t", pack_pk(["k"]), "c", 1, 1, 1, SITE, 1, 0)
    for bad in (MAX_CLOCK + 1, MAX_CLOCK + 2, I64_MAX):
        forged = attrs.evolve(good, **{field: bad})
        with pytest.raises(ProtocolError) as info:
            p.decode(p.encode(p.Push(1, 0, 1, [forged])))
        assert info.value.code == "invalid_changes" and field in str(info.value)


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.integers(I64_MIN, I64_MAX),
            st.floats(allow_nan=False),
            st.text(),
            st.binary(),
        ),
        max_size=20,
    )
)
def test_arbitrary_sqlite_values_round_trip(vals: list[Any]) -> None:
    msg = p.Push(1, 0, 1, [ch(v, seq=i) for i, v in enumerate(vals)])
    out = p.decode(p.encode(msg))
    assert isinstance(out, p.Push)
    assert all(_same(a.val, b) for a, b in zip(out.changes, vals, strict=True))


# ---------------------------------------------------------------------------- decode errors


def test_not_msgpack_is_bad_frame() -> None:
    assert _code(b"\xc1garbage") == "bad_frame"
    assert _code(b"") == "bad_frame"
    assert _code(b"\x92\x01") == "bad_frame"  # truncated array


def test_trailing_bytes_after_the_map_are_bad_frame() -> None:
    assert _code(p.encode(p.Ping(1)) + b"\x00") == "bad_frame"


@pytest.mark.parametrize("body", [[1, 2], "hello", 5, None, b"x"], ids=repr)
def test_a_frame_that_is_not_a_map_is_bad_frame(body: Any) -> None:
    assert _code(_raw(body)) == "bad_frame"  # type: ignore[arg-type]


def test_text_frame_is_bad_frame() -> None:
    assert _code(p.encode(p.Ping(1)).decode("latin-1")) == "bad_frame"


@pytest.mark.parametrize("t", ["nope", "", None, 1, ["hello"]], ids=repr)
def test_unknown_type_is_unknown_type(t: Any) -> None:
    assert _code(_raw({"t": t, "id": 1})) == "unknown_type"


def test_map_with_non_string_keys_is_bad_frame() -> None:
    assert _code(msgpack.packb({1: 2})) == "bad_frame"


def test_oversized_frame_is_frame_too_large_before_parsing() -> None:
    data = p.encode(p.Ping(1))
    assert p.decode(data, len(data)) == p.Ping(1)
    assert _code(data, len(data) - 1) == "frame_too_large"
    assert _code(b"\xc1" * 100, 10) == "frame_too_large"


def _body(msg: p.Message) -> dict[str, Any]:
    body: dict[str, Any] = msgpack.unpackb(p.encode(msg), raw=False)
    return body


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_every_missing_field_is_bad_frame(msg: p.Message) -> None:
    body = _body(msg)
    optional = {"token", "schema"} if msg.TYPE == "hello" else set()
    for key in body:
        if key == "t" or key in optional:
            continue
        broken = {k: v for k, v in body.items() if k != key}
        assert _code(_raw(broken)) == "bad_frame", key


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_every_mistyped_field_is_bad_frame(msg: p.Message) -> None:
    body = _body(msg)
    for key, value in body.items():
        if key == "t":
            continue
        wrong: list[Any] = [[1], {"a": 1}, 1.5]
        if not isinstance(value, str) and value is not None:
            wrong.append("x")
        if isinstance(value, int) and not isinstance(value, bool):
            wrong += [True, -1, 1 << 63]
        if isinstance(value, bool):
            wrong.append(1)
        if isinstance(value, bytes):
            wrong += [b"short", 7]
        for w in wrong:
            if key == "changes" and isinstance(w, list):
                continue  # a list of changes: invalid rows are tested below
            assert _code(_raw({**body, key: w})) == "bad_frame", (key, w)


@pytest.mark.parametrize(
    "schema",
    [
        [],
        {"t": []},
        {"t": {"pk": [], "columns": []}},
        {"t": {"pk": "id", "columns": []}},
        {"t": {"pk": ["id"], "columns": "x"}},
        {"t": {"pk": ["id", 1], "columns": []}},
        {"t": {"pk": ["id"]}},
    ],
    ids=repr,
)
def test_malformed_hello_schema_is_bad_frame(schema: Any) -> None:
    assert _code(_raw({**_body(HELLO), "schema": schema})) == "bad_frame"


GOOD_ROW: list[Any] = ["t", pack_pk([1]), "c", 1, 1, 1, SITE, 1, 0]


@pytest.mark.parametrize(
    "row",
    [
        "not a row",
        [],
        GOOD_ROW[:8],
        [*GOOD_ROW, 0],
        ["", *GOOD_ROW[1:]],
        [1, *GOOD_ROW[1:]],
        ["t", b"", *GOOD_ROW[2:]],
        ["t", "pk", *GOOD_ROW[2:]],
        [*GOOD_ROW[:2], "", *GOOD_ROW[3:]],
        [*GOOD_ROW[:3], [1], *GOOD_ROW[4:]],
        [*GOOD_ROW[:3], {"a": 1}, *GOOD_ROW[4:]],
        [*GOOD_ROW[:4], -1, *GOOD_ROW[5:]],
        [*GOOD_ROW[:4], "1", *GOOD_ROW[5:]],
        [*GOOD_ROW[:5], -1, *GOOD_ROW[6:]],
        [*GOOD_ROW[:5], 1.0, *GOOD_ROW[6:]],
        [*GOOD_ROW[:6], b"short", *GOOD_ROW[7:]],
        [*GOOD_ROW[:6], "s" * 16, *GOOD_ROW[7:]],
        [*GOOD_ROW[:7], 0, GOOD_ROW[8]],
        [*GOOD_ROW[:7], True, GOOD_ROW[8]],
        [*GOOD_ROW[:8], -1],
        [*GOOD_ROW[:3], math.nan, *GOOD_ROW[4:]],
        [*GOOD_ROW[:3], msgpack.ExtType(5, b"x"), *GOOD_ROW[4:]],
        [*GOOD_ROW[:3], 1 << 63, *GOOD_ROW[4:]],
        [*GOOD_ROW[:4], 1 << 53, *GOOD_ROW[5:]],
        [*GOOD_ROW[:7], 1 << 53, GOOD_ROW[8]],
    ],
    ids=repr,
)
@pytest.mark.parametrize("kind", ["push", "changes"])
def test_invalid_change_rows_are_invalid_changes(row: Any, kind: str) -> None:
    body = {"t": kind, "batch": 1, "base": 0, "upto": 1, "more": False, "changes": [GOOD_ROW, row]}
    if kind == "changes":
        del body["batch"]
    with pytest.raises(ProtocolError) as info:
        p.decode(_raw(body))
    assert info.value.code == "invalid_changes"
    assert "#1" in info.value.reason


def test_hello_site_must_be_16_bytes() -> None:
    assert _code(_raw({**_body(HELLO), "site": b"x" * 15})) == "bad_frame"
    assert _code(_raw({**_body(HELLO), "token": 5})) == "bad_frame"


def test_error_codes_are_stable_strings() -> None:
    assert {c.value for c in p.ErrorCode} >= {
        "bad_frame",
        "unknown_type",
        "unexpected_message",
        "unsupported_version",
        "frame_too_large",
        "unauthorized",
        "token_expired",
        "forbidden",
        "bad_store",
        "schema_mismatch",
        "invalid_changes",
        "internal",
    }
    assert p.RETRYABLE.isdisjoint(p.FATAL_FOR_PEER)
    assert p.ErrorCode.UNAUTHORIZED in p.FATAL_FOR_PEER
    assert p.ErrorCode.INTERNAL in p.RETRYABLE


def test_error_from_maps_codes_to_exceptions() -> None:
    assert isinstance(p.error_from(p.Error("forbidden", "x")), AuthError)
    assert isinstance(p.error_from(p.Error("token_expired", "x")), AuthError)
    assert isinstance(p.error_from(p.Error("schema_mismatch", "table 't'")), SchemaMismatchError)
    err = p.error_from(p.Error("bad_store", "why"))
    assert isinstance(err, ProtocolError) and err.code == "bad_store"


# ---------------------------------------------------------------------------- order rules


def _relay_code(*msgs: p.Message | bytes) -> str:
    conn = p.RelayConnection()
    with pytest.raises(ProtocolError) as info:
        for m in msgs:
            conn.receive(m if isinstance(m, bytes) else p.encode(m))
    return info.value.code


def test_relay_accepts_hello_then_peer_messages() -> None:
    conn = p.RelayConnection()
    assert conn.receive(p.encode(HELLO)) == HELLO
    assert conn.hello == HELLO
    for m in (p.Push(1, 0, 1, [ch()]), p.Received(1), p.Ping(1)):
        assert conn.receive(p.encode(m)) == m


@pytest.mark.parametrize(
    "first",
    [p.Push(1, 0, 1, []), p.Received(1), p.Ping(1), p.Ack(1, 1, 1), p.Error("x", "y")],
    ids=lambda m: m.TYPE,
)
def test_relay_requires_hello_first(first: p.Message) -> None:
    assert _relay_code(first) == "unexpected_message"


@pytest.mark.parametrize("version", [0, 2, 99])
def test_relay_refuses_other_protocol_versions(version: int) -> None:
    assert _relay_code(p.Hello(version, "s", SITE, {}, 0, "", None)) == "unsupported_version"


@pytest.mark.parametrize(
    "msg",
    [
        HELLO,
        p.Ack(1, 1, 1),
        p.Welcome(1, "e", 1, 1),
        p.Changes(0, 1, []),
        p.Pong(1, 1),
        p.Error("x", "y"),
    ],
    ids=lambda m: m.TYPE,
)
def test_relay_refuses_relay_messages_and_second_hello(msg: p.Message) -> None:
    assert _relay_code(HELLO, msg) == "unexpected_message"


def test_relay_connection_applies_its_frame_limit() -> None:
    conn = p.RelayConnection(max_frame=100)
    assert conn.receive(p.encode(p.Hello(1, "s", SITE, {}, 0, "", None))).TYPE == "hello"
    with pytest.raises(ProtocolError) as info:
        conn.receive(p.encode(p.Push(1, 0, 1, [ch("x" * 100)])))
    assert info.value.code == "frame_too_large"


def test_peer_requires_welcome_first_but_accepts_error_any_time() -> None:
    conn = p.PeerConnection()
    with pytest.raises(ProtocolError) as info:
        conn.receive(p.encode(p.Ack(1, 1, 1)))
    assert info.value.code == "unexpected_message"
    conn = p.PeerConnection()
    assert isinstance(conn.receive(p.encode(p.Error("forbidden", "no"))), p.Error)
    assert isinstance(conn.receive(p.encode(p.Welcome(1, "e", 0, 0))), p.Welcome)
    for m in (p.Ack(1, 1, 1), p.Changes(0, 1, [ch()]), p.Pong(1, 1), p.Error("internal", "x")):
        assert conn.receive(p.encode(m)) == m


@pytest.mark.parametrize(
    "msg",
    [p.Welcome(1, "e", 0, 0), HELLO, p.Push(1, 0, 1, []), p.Received(1), p.Ping(1)],
    ids=lambda m: m.TYPE,
)
def test_peer_refuses_peer_messages_and_second_welcome(msg: p.Message) -> None:
    conn = p.PeerConnection()
    conn.receive(p.encode(p.Welcome(1, "e", 0, 0)))
    with pytest.raises(ProtocolError) as info:
        conn.receive(p.encode(msg))
    assert info.value.code == "unexpected_message"


# ---------------------------------------------------------------------------- chunking


def _changes_for(sizes: list[tuple[int, int]]) -> list[Change]:
    """Changes of consecutive versions: per version (count, value size)."""
    out = []
    for v, (n, size) in enumerate(sizes, start=1):
        for i in range(n):
            out.append(ch("x" * size, db_version=v, pk=i, seq=i))
    return out


version_sizes = st.lists(
    st.tuples(st.integers(1, 12), st.integers(0, 300)), min_size=0, max_size=15
)


@settings(max_examples=300)
@given(version_sizes, st.integers(1, 10), st.integers(1, 2000))
def test_chunk_changes_keeps_whole_versions_and_respects_limits(
    sizes: list[tuple[int, int]], max_cells: int, max_bytes: int
) -> None:
    changes = _changes_for(sizes)
    units = p.chunk_changes(changes, max_cells, max_bytes)
    # nothing lost, nothing reordered
    assert [c for _, part, _ in units for c in part] == changes
    for upto, part, more in units:
        assert part, "no empty frames"
        # limits hold, except a single change that alone exceeds the byte limit
        assert len(part) <= max_cells
        if len(part) > 1:
            assert sum(p._cost(c) for c in part) <= max_bytes
        if not more:
            assert upto == part[-1].db_version
    # a unit ends (more=False) only at a version boundary
    flat: list[tuple[int, bool]] = []
    for _, part, more in units:
        flat.append((part[-1].db_version, more))
    ends = {c.db_version: i for i, c in enumerate(changes)}
    pos = -1
    for (_, part, more), (last_v, _) in zip(units, flat, strict=True):
        pos += len(part)
        if not more:
            assert ends[last_v] == pos, "a frame without more=true split a version"
        else:
            # a split version: every part of it carries that one version
            assert {c.db_version for c in part} == {last_v}
    if units:
        assert units[-1][2] is False


@settings(max_examples=300)
@given(st.integers(0, 40), st.integers(0, 300), st.integers(1, 10), st.integers(1, 2000))
def test_split_frames_respects_limits_and_keeps_order(
    n: int, size: int, max_cells: int, max_bytes: int
) -> None:
    changes = _changes_for([(n, size)]) if n else []
    parts = p.split_frames(changes, max_cells, max_bytes)
    assert len(parts) >= 1
    assert [c for part in parts for c in part] == changes
    for part in parts:
        assert len(part) <= max_cells
        if len(part) > 1:
            assert sum(p._cost(c) for c in part) <= max_bytes
    if n:
        assert all(parts)


def test_chunks_fit_the_frame_limit_when_encoded() -> None:
    changes = _changes_for([(50, 1000), (3, 200_000), (200, 10)])
    max_frame = 256 * 1024
    for upto, part, more in p.chunk_changes(changes, 5000, max_frame // 2):
        assert len(p.encode(p.Push(1, 0, upto, part, more))) <= max_frame
    for part in p.split_frames(changes, 5000, max_frame // 2):
        assert len(p.encode(p.Changes(0, 1, part))) <= max_frame
