"""Property-based fuzzing of the wire decoder: whatever the bytes, ``decode`` returns a message or
raises :class:`ProtocolError` (never another exception, never a hang, never a huge allocation).

Inputs: random bytes; valid frames of every message type mutated (bytes flipped, inserted,
deleted, truncated, spliced); hand-made msgpack with wrong types, invalid UTF-8, huge declared
lengths, deep nesting, extension types, out-of-range integers and forged fields.
"""

from __future__ import annotations

import os

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crsync import Change, pack_pk
from crsync import protocol as p
from crsync.errors import ProtocolError

from .conftest import LONG

EXAMPLES = 20_000 if LONG else 1_500
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SITE = bytes(range(16))
CH = Change("todos", pack_pk(["k", 7]), "title", "v", 3, 9, SITE, 1, 4)
VALID: list[p.Message] = [
    p.Hello(1, "store", SITE, {"todos": p.TableSchema(("id",), ("title",))}, 5, "e", "tok"),
    p.Welcome(1, "epoch", 10, 3),
    p.Push(1, 0, 9, [CH, CH], False),
    p.Ack(1, 9, 10),
    p.Changes(0, 10, [CH], True),
    p.Received(10),
    p.Ping(3),
    p.Pong(3, 10),
    p.Error("internal", "boom"),
]
FRAMES = [p.encode(m) for m in VALID]
TRIED = {"inputs": 0}


def check(data: bytes) -> None:
    TRIED["inputs"] += 1
    try:
        msg = p.decode(data, max_size=1 << 20)
    except ProtocolError as exc:
        assert exc.code in {c.value for c in p.ErrorCode}
        return
    assert isinstance(msg, tuple(type(m) for m in VALID))


def test_every_valid_frame_decodes_to_itself() -> None:
    for m, f in zip(VALID, FRAMES, strict=True):
        assert p.decode(f) == m


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_protocol_error(data: bytes) -> None:
    check(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    frame = bytearray(draw(st.sampled_from(FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice", "dup"]))
        i = draw(st.integers(0, max(len(frame) - 1, 0)))
        if op == "flip" and frame:
            frame[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            frame[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and frame:
            del frame[i : i + draw(st.integers(1, 8))]
        elif op == "truncate":
            del frame[i:]
        elif op == "splice":
            other = draw(st.sampled_from(FRAMES))
            j = draw(st.integers(0, len(other)))
            frame[i:] = other[j:]
        elif op == "dup":
            frame[i:i] = frame[i : i + draw(st.integers(1, 32))]
    return bytes(frame)


@FUZZ
@given(mutated())
def test_mutated_valid_frames_only_raise_protocol_error(data: bytes) -> None:
    check(data)


LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
ANY = st.recursive(
    LEAF,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)
FIELDS = ["v", "store", "site", "schema", "cursor", "epoch", "token", "batch", "base", "upto"]
FIELDS += ["changes", "more", "head", "acked", "id", "code", "reason"]


@st.composite
def wrong_types(draw: st.DrawFn) -> bytes:
    """A map with a real type tag and valid-looking fields, some replaced by anything."""
    base = msgpack.unpackb(draw(st.sampled_from(FRAMES)), raw=False)
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        if draw(st.booleans()):
            base[key] = draw(ANY)
        else:
            base.pop(key, None)
    rows = base.get("changes")
    if isinstance(rows, list) and rows and isinstance(rows[0], list) and len(rows[0]) == 9:
        row = list(base["changes"][0])
        row[draw(st.integers(0, 8))] = draw(ANY)
        base["changes"] = [row[: draw(st.integers(0, 10))]]
    data: bytes = msgpack.packb(base, use_bin_type=True)
    return data


@FUZZ
@given(wrong_types())
def test_wrong_types_and_forged_fields_only_raise_protocol_error(data: bytes) -> None:
    check(data)


def _str_header(n: int) -> bytes:
    return b"\xdb" + n.to_bytes(4, "big")


HOSTILE = {
    "deep-array": b"\x91" * 200_000 + b"\xc0",
    "deep-map": b"\x81\xa1t" * 100_000 + b"\xc0",
    "huge-str": b"\x81\xa1t" + _str_header(0xFFFFFFFF) + b"x",
    "huge-bin": b"\x81\xa1t\xc6\xff\xff\xff\xff",
    "huge-array": b"\xdd\xff\xff\xff\xff",
    "huge-map": b"\xdf\xff\xff\xff\xff",
    "invalid-utf8-type": b"\x81\xa1t\xa2\xff\xfe",
    "invalid-utf8-key": b"\x81\xa2\xc3\x28\xa4push",
    "ext-type": b"\x81\xa1t\xd4\x05\x01",
    "timestamp": b"\x81\xa1t\xd6\xff\x00\x00\x00\x01",
    "non-str-key": msgpack.packb({1: "push"}),
    "trailing": FRAMES[5] + b"\x00",
    "float32-version": b"\x82\xa1t\xa8received\xa4upto\xca\x3f\x80\x00\x00",
    "uint64-version": msgpack.packb({"t": "received", "upto": 2**64 - 1}),
    "negative-version": msgpack.packb({"t": "received", "upto": -1}),
    "bool-version": msgpack.packb({"t": "received", "upto": True}),
    "bad-site": msgpack.packb({**msgpack.unpackb(FRAMES[0]), "site": b"short"}),
    "empty": b"",
    "nul": b"\x00",
}


def test_hostile_encodings_only_raise_protocol_error() -> None:
    for name, data in HOSTILE.items():
        try:
            check(data)
        except AssertionError:
            raise
        except Exception as exc:  # pragma: no cover - the failure being looked for
            raise AssertionError(f"{name}: {type(exc).__name__}: {exc}") from exc


def test_frame_over_the_limit_is_refused_before_parsing() -> None:
    try:
        p.decode(b"\x00" * 101, max_size=100)
    except ProtocolError as exc:
        assert exc.code == "frame_too_large"
    else:  # pragma: no cover
        raise AssertionError("no error")


def teardown_module() -> None:
    if os.environ.get("CRSYNC_FAULT_REPORT"):
        print(f"\nFUZZ_DECODER inputs={TRIED['inputs']}")
