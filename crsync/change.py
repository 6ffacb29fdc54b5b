"""The change record: one replicated cell or row-existence record, as in ``crsql_changes``."""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, NamedTuple

import attrs

from .errors import InvalidChangeError
from .pack import SqlValue

SENTINEL = "-1"
"""``cid`` of a row-existence record (create, delete or resurrect)."""

COLLECTED_SITE = bytes(16)
"""``site_id`` of a *collected* tombstone: a delete below the store's horizon whose author,
seq and clock the relay no longer keeps, only the row's causal length (see docs/concepts.md,
"Tombstones and the horizon"). No device may use it as its own site id."""

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1
MAX_CLOCK = (1 << 53) - 1
"""Largest ``col_version``, ``cl`` and ``db_version`` crsync accepts in a change (JavaScript's
``Number.MAX_SAFE_INTEGER``, so browser peers read every clock exactly). Legitimate histories
never come near it (a cell edited a million times a second for 285 years); a clock above it can
only come from a bug or an attacker, and would freeze the cell or row for every device, so it
is refused wherever changes enter: the relay, devices' merges, the decoder."""


class Change(NamedTuple):
    """One change, with exactly the columns of cr-sqlite's ``crsql_changes``.

    An immutable record (a named tuple, so that the feed, the wire codec and the merge handle
    hundreds of thousands of them at C speed: building one costs a tenth of a slotted class's
    ``__init__``, and msgpack writes it as the wire's 9-array without copying). Compares equal
    to a plain tuple of the same nine fields.

    Attributes:
        table: name of the replicated table.
        pk: packed primary key (see :func:`crsync.pack_pk`).
        cid: column name, or ``"-1"`` for a row-existence record.
        val: the cell's value (None for ``"-1"`` records).
        col_version: per-cell version; for ``"-1"`` records, the causal length.
        db_version: the sending database's logical clock for this change.
        site_id: 16-byte id of the site that authored the winning write.
        cl: causal length of the row (odd alive, even deleted).
        seq: position of the write inside its author's transaction.
    """

    table: str
    pk: bytes
    cid: str
    val: SqlValue
    col_version: int
    db_version: int
    site_id: bytes
    cl: int
    seq: int

    def as_tuple(self) -> tuple[str, bytes, str, SqlValue, int, int, bytes, int, int]:
        """The nine fields in ``crsql_changes`` column order, as a plain tuple."""
        return tuple.__new__(tuple, self)


# An attrs class of the same fields lends Change its ``__attrs_attrs__``, so ``attrs.evolve``,
# ``attrs.asdict`` and ``attrs.fields`` keep working on changes (Change was an attrs class
# before it became a named tuple).
_ChangeFields = attrs.make_class("Change", list(Change._fields), frozen=True, slots=True)
Change.__attrs_attrs__ = _ChangeFields.__attrs_attrs__  # type: ignore[attr-defined]

make_change = functools.partial(tuple.__new__, Change)
"""Build a :class:`Change` from one 9-sequence without checking it (C speed; for rows crsync
read itself or validated)."""


def _check_int(name: str, v: object, minimum: int, index: int, maximum: int = I64_MAX) -> int:
    if type(v) is not int:
        raise InvalidChangeError(
            f"change #{index}: {name} must be an integer, got {type(v).__name__}"
        )
    if not minimum <= v <= maximum:
        raise InvalidChangeError(
            f"change #{index}: {name} = {v} is out of range ({minimum}..{maximum})"
        )
    return v


def validate_change(c: object, index: int = 0) -> Change:
    """Check every field of an incoming change and return it normalised.

    Accepts a :class:`Change` or any 9-sequence in ``crsql_changes`` column order.

    Raises:
        InvalidChangeError: naming the change's position and the field at fault.
    """
    if isinstance(c, Change):
        t = c.as_tuple()
    elif isinstance(c, tuple | list):
        if len(c) != 9:
            raise InvalidChangeError(f"change #{index}: expected 9 fields, got {len(c)}")
        t = tuple(c)
    else:
        raise InvalidChangeError(f"change #{index}: not a change: {type(c).__name__}")
    table, pk, cid, val, col_version, db_version, site_id, cl, seq = t
    if not isinstance(table, str) or not table:
        raise InvalidChangeError(f"change #{index}: table must be a non-empty string")
    if isinstance(pk, bytearray | memoryview):
        pk = bytes(pk)
    if not isinstance(pk, bytes) or not pk:
        raise InvalidChangeError(f"change #{index}: pk must be a non-empty packed blob")
    if not isinstance(cid, str) or not cid:
        raise InvalidChangeError(f"change #{index}: cid must be a non-empty string")
    if isinstance(val, bytearray | memoryview):
        val = bytes(val)
    if isinstance(val, bool):
        val = int(val)
    if val is not None and not isinstance(val, int | float | str | bytes):
        raise InvalidChangeError(
            f"change #{index}: val of type {type(val).__name__} is not an SQLite value"
        )
    if isinstance(val, int) and not I64_MIN <= val <= I64_MAX:
        raise InvalidChangeError(f"change #{index}: integer val does not fit in 64 bits")
    if isinstance(val, float) and val != val:
        raise InvalidChangeError(f"change #{index}: val is NaN, which SQLite cannot store")
    _check_int("col_version", col_version, 0, index, MAX_CLOCK)
    _check_int("db_version", db_version, 0, index, MAX_CLOCK)
    _check_int("cl", cl, 1, index, MAX_CLOCK)
    _check_int("seq", seq, 0, index)
    if isinstance(site_id, bytearray | memoryview):
        site_id = bytes(site_id)
    if not isinstance(site_id, bytes) or len(site_id) != 16:
        raise InvalidChangeError(f"change #{index}: site_id must be 16 bytes")
    if isinstance(c, Change) and val is c.val and pk is c.pk and site_id is c.site_id:
        return c
    return Change(table, pk, cid, val, col_version, db_version, site_id, cl, seq)


def validate_changes(changes: Iterable[object]) -> list[Change]:
    """Validate a whole batch; raise on the first bad change (nothing is applied).

    Accepts :class:`Change` objects and 9-sequences (tuples, lists: decoded wire rows). The
    common case, fields of exactly the expected types and in range, is checked inline; any
    other change goes through :func:`validate_change`, which normalises or refuses it."""
    out: list[Change] = []
    append = out.append
    new = tuple.__new__
    c: Any
    for i, c in enumerate(changes):
        tc = type(c)
        if tc is Change or ((tc is list or tc is tuple) and len(c) == 9):
            table, pk, cid, v, cv, dv, site, cl, seq = c
            tv = type(v)
            if (
                type(table) is str
                and type(pk) is bytes
                and type(cid) is str
                and type(site) is bytes
                and type(cv) is int
                and type(dv) is int
                and type(cl) is int
                and type(seq) is int
                and len(site) == 16
                and 0 <= cv <= MAX_CLOCK
                and 0 <= dv <= MAX_CLOCK
                and 1 <= cl <= MAX_CLOCK
                and 0 <= seq <= I64_MAX
                and table != ""
                and cid != ""
                and pk != b""
                and (
                    v is None
                    or tv is str
                    or tv is bytes
                    or (tv is int and I64_MIN <= v <= I64_MAX)
                    or (tv is float and v == v)
                )
            ):
                append(c if tc is Change else new(Change, c))
                continue
        append(validate_change(c, i))
    return out
