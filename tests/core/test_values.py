"""cr-sqlite's value order used to break equal col_version ties (§6.3, TV-12)."""

from __future__ import annotations

import pytest

from crsync.pack import SqlValue
from crsync.values import compare_values, same_value

# (a, b, winner) from TV-12
TV12 = [
    (5, "5", 5),
    (1, 1.5, 1),
    (2.0, 2, 2),
    ("a", b"a", "a"),
    (None, 0, 0),
    (b"\x00", None, b"\x00"),
    (-1, 0, 0),
    ("B", "a", "a"),
    ("é", "z", "é"),
    (b"\x01", b"\x01\x00", b"\x01\x00"),
    (3.5, -2.0, 3.5),
    (10, 9, 10),
]


@pytest.mark.parametrize(("a", "b", "winner"), TV12, ids=lambda x: repr(x))
def test_tv12_winner_either_order(a: SqlValue, b: SqlValue, winner: SqlValue) -> None:
    first = a if compare_values(a, b) > 0 else b
    second = b if compare_values(b, a) > 0 else a
    assert type(first) is type(winner) and first == winner
    assert type(second) is type(winner) and second == winner
    assert (compare_values(a, b) > 0) == (compare_values(b, a) < 0)


def test_storage_classes_rank_integer_real_text_blob_null() -> None:
    ladder: list[SqlValue] = [-(1 << 63), 1e308, "\U0010ffff", b"\xff" * 10, None]
    for i, hi in enumerate(ladder):
        for lo in ladder[i + 1 :]:
            assert compare_values(hi, lo) > 0
            assert compare_values(lo, hi) < 0


def test_text_compares_utf8_bytes_not_code_points_or_collation() -> None:
    # UTF-8 byte order equals code point order; UTF-16 order (as in JavaScript) differs for
    # characters above U+FFFF, which are surrogate pairs D800..DFFF there.
    assert compare_values("\U00010000", "\uffff") > 0
    assert compare_values("\uff61", "\U0001f600") < 0
    assert compare_values("Z", "a") < 0  # no case folding
    assert compare_values("a", "a\x00") < 0  # prefix is smaller
    assert compare_values("", "\x00") < 0


def test_integers_compare_signed_64_bit() -> None:
    assert compare_values(-(1 << 63), (1 << 63) - 1) < 0
    assert compare_values(-1, -2) > 0


def test_blob_prefix_is_smaller() -> None:
    assert compare_values(b"", b"\x00") < 0
    assert compare_values(b"\x02", b"\x01\xff") > 0


def test_equal_values_tie() -> None:
    for v in (0, 0.0, "", b"", None, "x", b"x"):
        assert compare_values(v, v) == 0
        assert same_value(v, v)
    assert compare_values(0.0, -0.0) == 0
    assert not same_value(1, 1.0)
    assert not same_value("a", b"a")
