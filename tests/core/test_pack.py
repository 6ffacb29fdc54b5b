"""Primary-key packing is byte-identical to cr-sqlite's crsql_pack_columns (§17.P)."""

from __future__ import annotations

import math
import struct

import pytest

import crsync
from crsync import PackError, pack_pk, unpack_pk

VECTORS: list[tuple[tuple[object, ...], str]] = [
    ((1,), "01 09 01"),
    ((0,), "01 01"),
    ((12, "str", b"\x01\x02\x03"), "03 09 0C 0B 03 73 74 72 0C 03 01 02 03"),
    ((4, 5), "02 09 04 09 05"),
    (("a",), "01 0B 01 61"),
    (("r1",), "01 0B 02 72 31"),
    ((200,), "01 09 C8"),
    ((256,), "01 11 01 00"),
    ((2147483648,), "01 21 80 00 00 00"),
    ((4294967295,), "01 21 FF FF FF FF"),
    ((1099511627776,), "01 31 01 00 00 00 00 00"),
    ((-1,), "01 41 FF FF FF FF FF FF FF FF"),
    ((-2500000,), "01 41 FF FF FF FF FF D9 DA 60"),
    ((1.5,), "01 02 3F F8 00 00 00 00 00 00"),
    (("",), "01 03"),
    ((b"",), "01 04"),
    ((None,), "01 05"),
    (("x" * 300,), "01 13 01 2C " + "78 " * 300),
]


@pytest.mark.parametrize(("values", "hexstr"), VECTORS, ids=[h[:20] for _, h in VECTORS])
def test_pack_matches_cr_sqlite_vector(values: tuple[object, ...], hexstr: str) -> None:
    assert pack_pk(values).hex() == bytes.fromhex(hexstr).hex()  # type: ignore[arg-type]


@pytest.mark.parametrize(("values", "hexstr"), VECTORS, ids=[h[:20] for _, h in VECTORS])
def test_unpack_matches_cr_sqlite_vector(values: tuple[object, ...], hexstr: str) -> None:
    assert unpack_pk(bytes.fromhex(hexstr)) == values


def test_200_decodes_unsigned_not_minus_56() -> None:
    assert unpack_pk(bytes.fromhex("0109C8")) == (200,)


ROUND_TRIP = [
    (-(1 << 63),),
    ((1 << 63) - 1,),
    (-(1 << 63) + 1, (1 << 63) - 2),
    (0.0,),
    (-0.0,),
    (math.inf,),
    (-math.inf,),
    (5e-324,),
    (1e308,),
    (-1.5e-310,),
    ("héllo wörld \u2603 \U0001f600",),
    ("a\x00b",),
    ("\x00",),
    ("",),
    (b"",),
    (b"\x00\xff" * 1000,),
    (None,),
    (1, "two", b"three", 4.0, None),
    tuple(range(255)),
    ("x" * 70000,),
    (1 << 32, 1 << 40, 1 << 48, 1 << 56, (1 << 63) - 1, 127, 128, 255, 65535, 65536),
]


@pytest.mark.parametrize("values", ROUND_TRIP, ids=lambda v: repr(v)[:30])
def test_values_round_trip_exactly(values: tuple[object, ...]) -> None:
    back = unpack_pk(pack_pk(values))  # type: ignore[arg-type]
    assert len(back) == len(values)
    for a, b in zip(back, values, strict=True):
        assert type(a) is type(b)
        if isinstance(a, float):
            assert struct.pack(">d", a) == struct.pack(">d", b)  # sign of -0.0 kept
        else:
            assert a == b


def test_negative_integers_always_take_eight_bytes() -> None:
    for v in (-1, -128, -(1 << 31), -(1 << 63)):
        assert pack_pk([v])[1] == (8 << 3) | 1
        assert len(pack_pk([v])) == 10


def test_integer_sizes_are_minimal() -> None:
    for n in range(1, 9):
        v = 1 << (8 * (n - 1))  # smallest value needing n bytes
        assert pack_pk([v])[1] >> 3 == n
        assert pack_pk([v - 1])[1] >> 3 == n - 1
        assert pack_pk([min((1 << (8 * n)) - 1, (1 << 63) - 1)])[1] >> 3 == n


def test_pack_refuses_non_sqlite_values() -> None:
    for bad in (object(), [1], {"a": 1}, 1 << 63, -(1 << 63) - 1):
        with pytest.raises(PackError):
            pack_pk([bad])  # type: ignore[list-item]


def test_pack_refuses_more_than_255_values() -> None:
    with pytest.raises(PackError):
        pack_pk([1] * 256)


BAD_BLOBS = {
    "empty": "",
    "count larger than values": "02 09 01",
    "count without values": "01",
    "int payload truncated": "01 11 01",
    "real truncated": "01 02 3F F8 00",
    "text length runs past end": "01 0B 05 61 62",
    "text length prefix truncated": "01 13 01",
    "blob runs past end": "01 0C 03 01 02",
    "trailing bytes": "01 09 01 00",
    "trailing after zero count": "00 05",
    "type code 0": "01 00",
    "type code 6": "01 06",
    "type code 7": "01 07",
    "int longer than 8 bytes": "01 49 00 00 00 00 00 00 00 00 01",
    "real with nonzero n": "01 0A 3F F8 00 00 00 00 00 00",
    "null with nonzero n": "01 0D",
    "invalid utf8 text": "01 0B 01 FF",
}


@pytest.mark.parametrize("hexstr", list(BAD_BLOBS.values()), ids=list(BAD_BLOBS))
def test_malformed_blob_is_refused(hexstr: str) -> None:
    with pytest.raises(PackError):
        unpack_pk(bytes.fromhex(hexstr))


def test_unpack_refuses_non_bytes() -> None:
    with pytest.raises(PackError):
        unpack_pk("0109 01")  # type: ignore[arg-type]


def test_pack_error_is_a_crsync_error() -> None:
    assert issubclass(PackError, crsync.InvalidChangeError)
    assert issubclass(PackError, crsync.CrsyncError)
