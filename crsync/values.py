"""cr-sqlite's total order on SQLite values, used to break equal-version ties.

Different storage classes are ordered by SQLite type code, lower code greater:
INTEGER > REAL > TEXT > BLOB > NULL (so ``1`` beats ``1.5`` and ``'a'`` beats ``x'61'``).
Within a class: signed 64-bit integers, IEEE reals, UTF-8 bytes of text, raw bytes of blobs.
"""

from __future__ import annotations

from .pack import SqlValue


def type_rank(v: SqlValue) -> int:
    """Higher rank wins: INTEGER 4, REAL 3, TEXT 2, BLOB 1, NULL 0."""
    if v is None:
        return 0
    if isinstance(v, int):
        return 4
    if isinstance(v, float):
        return 3
    if isinstance(v, str):
        return 2
    return 1


def compare_values(a: SqlValue, b: SqlValue) -> int:
    """Compare two SQLite values with cr-sqlite's merge order.

    Returns:
        A negative number if ``a`` loses to ``b``, zero if they tie, positive if ``a`` wins.
    """
    if type(a) is type(b):  # one storage class (None, int, float, str or bytes)
        if a is None:
            return 0
        # Text: the order of code points is the order of their UTF-8 bytes (lone surrogates
        # included, as "surrogatepass" encodes them), so no encoding is needed.
        return (a > b) - (a < b)  # type: ignore[operator]
    ra, rb = type_rank(a), type_rank(b)
    if ra != rb:
        return ra - rb
    if a is None or b is None:
        return 0
    if isinstance(a, str):
        assert isinstance(b, str)
        ab, bb = a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
        return (ab > bb) - (ab < bb)
    return (a > b) - (a < b)  # type: ignore[operator]


def same_value(a: SqlValue, b: SqlValue) -> bool:
    """True if two values are the same for cr-sqlite (same class and equal)."""
    return type_rank(a) == type_rank(b) and compare_values(a, b) == 0
