"""Primary-key packing, byte-identical to cr-sqlite's ``crsql_pack_columns``.

Layout: one count byte, then per value a header byte ``(n << 3) | type`` and a payload.
``type`` is SQLite's type code (1 INTEGER, 2 REAL, 3 TEXT, 4 BLOB, 5 NULL). For integers ``n``
is the minimal big-endian byte length (every negative number takes 8 bytes, two's complement);
for text and blobs ``n`` is the byte length of the length prefix. Integers are decoded as
*unsigned* big-endian and reinterpreted as signed only for 8 bytes (cr-sqlite's own decoder
depends on a library quirk for this; see docs/compatibility.md).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from .errors import PackError

SqlValue = int | float | str | bytes | None

_INT, _REAL, _TEXT, _BLOB, _NULL = 1, 2, 3, 4, 5
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1
_DOUBLE = struct.Struct(">d")


def _uint_len(u: int) -> int:
    """Bytes needed for an unsigned value, as cr-sqlite sizes them (0 for zero)."""
    return (u.bit_length() + 7) // 8


def pack_pk(values: Sequence[SqlValue]) -> bytes:
    """Pack primary-key values into cr-sqlite's ``crsql_pack_columns`` format.

    Args:
        values: the primary-key values in primary-key order (at most 255).

    Returns:
        The packed blob, the row's identity on the wire.

    Raises:
        PackError: a value is not an SQLite value, an integer is out of 64-bit range, or
            there are more than 255 values.
    """
    if len(values) == 1 and type(values[0]) is int and 0 <= values[0] <= _I64_MAX:
        n = (values[0].bit_length() + 7) >> 3  # fast path: one non-negative integer key
        return bytes((1, (n << 3) | _INT)) + values[0].to_bytes(n, "big")
    if len(values) > 255:
        raise PackError(f"cannot pack {len(values)} values (at most 255)")
    out = bytearray((len(values),))
    for v in values:
        if v is None:
            out.append(_NULL)
        elif isinstance(v, int):  # bool is an int, as sqlite3 binds it
            if not _I64_MIN <= v <= _I64_MAX:
                raise PackError(f"integer {v} does not fit in 64 bits")
            u = v & 0xFFFFFFFFFFFFFFFF
            n = _uint_len(u)
            out.append((n << 3) | _INT)
            out += u.to_bytes(n, "big")
        elif isinstance(v, float):
            out.append(_REAL)
            out += _DOUBLE.pack(v)
        elif isinstance(v, str):
            data = v.encode("utf-8", "surrogatepass")
            _append_sized(out, _TEXT, data)
        elif isinstance(v, bytes | bytearray | memoryview):
            _append_sized(out, _BLOB, bytes(v))
        else:
            raise PackError(f"cannot pack a value of type {type(v).__name__}")
    return bytes(out)


def _append_sized(out: bytearray, code: int, data: bytes) -> None:
    size = len(data)
    n = _uint_len(size)
    out.append((n << 3) | code)
    out += size.to_bytes(n, "big")
    out += data


def small_int_key(blob: bytes) -> int | None:
    """The value of a packed one-column key holding an integer in ``0..2**56-1`` in its usual
    encoding, else None (then use :func:`unpack_pk`). The common key, decoded without
    :func:`unpack_pk`'s general loop; the value is the one :func:`unpack_pk` returns."""
    if len(blob) >= 2 and blob[0] == 1:
        h = blob[1]
        if h & 7 == _INT and len(blob) == 2 + (h >> 3) and h >> 3 < 8:
            return int.from_bytes(blob[2:], "big")
    return None


def unpack_pk(blob: bytes) -> tuple[SqlValue, ...]:
    """Decode a packed primary key.

    Args:
        blob: bytes produced by :func:`pack_pk` or by cr-sqlite.

    Returns:
        The tuple of values.

    Raises:
        PackError: the blob is truncated, has trailing bytes, an unknown type code or an
            impossible length.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise PackError(f"a packed pk must be bytes, not {type(blob).__name__}")
    b = bytes(blob)
    if not b:
        raise PackError("empty packed pk")
    count = b[0]
    pos = 1
    end = len(b)
    values: list[SqlValue] = []
    for i in range(count):
        if pos >= end:
            raise PackError(f"packed pk truncated: {count} values announced, {i} present")
        header = b[pos]
        pos += 1
        code = header & 0x07
        n = header >> 3
        if code == _INT:
            if n > 8 or pos + n > end:
                raise PackError("packed pk: bad integer length")
            u = int.from_bytes(b[pos : pos + n], "big")
            pos += n
            values.append(u - (1 << 64) if n == 8 and u >= (1 << 63) else u)
        elif code == _REAL:
            if n != 0 or pos + 8 > end:
                raise PackError("packed pk: bad real")
            values.append(_DOUBLE.unpack_from(b, pos)[0])
            pos += 8
        elif code in (_TEXT, _BLOB):
            if n > 8 or pos + n > end:
                raise PackError("packed pk: bad length prefix")
            size = int.from_bytes(b[pos : pos + n], "big")
            pos += n
            if pos + size > end:
                raise PackError("packed pk: value runs past the end")
            data = b[pos : pos + size]
            pos += size
            if code == _TEXT:
                try:
                    values.append(data.decode("utf-8", "surrogatepass"))
                except UnicodeDecodeError as exc:
                    raise PackError("packed pk: text is not valid UTF-8") from exc
            else:
                values.append(data)
        elif code == _NULL:
            if n != 0:
                raise PackError("packed pk: bad NULL header")
            values.append(None)
        else:
            raise PackError(f"packed pk: unknown type code {code}")
    if pos != end:
        raise PackError(f"packed pk: {end - pos} trailing bytes")
    return tuple(values)
