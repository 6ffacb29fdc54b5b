"""The relay store's rules, shared by both backends (``RelayStore`` on SQLite, ``PgRelayStore``
on PostgreSQL) as pure functions: no I/O, no SQL.

* :func:`plan_schema`: what recording a peer's announced schema changes, or why it is refused;
* :func:`check_unit`: refuse a pushed unit devices could not apply, grouping it by row;
* :func:`row_state` and :func:`merge_groups`: a stored row's state and the cells a unit's merge
  writes (with :mod:`crsync.merge_rules`);
* :func:`take_versions` and :func:`take_part`: how a read for a peer is cut to its budget.

Each backend only reads and writes: what the rules decide is the same on both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import attrs

from crsync.change import SENTINEL, Change
from crsync.errors import CrsyncError, InvalidChangeError, PackError
from crsync.merge_rules import MERGE_VERSION, RowState, all_fresh_cells, apply_change
from crsync.pack import SqlValue, small_int_key, unpack_pk
from crsync.protocol import TableSchema, quote

log = logging.getLogger(__name__)

MAX_NAME = 2048
MAX_TABLES = 10_000  # announced tables per store
MAX_COLUMNS = 2_000  # announced columns per table (SQLite's own default limit)

RowKey = tuple[str, bytes]
_T = TypeVar("_T")


# ---------------------------------------------------------------------------- records


@attrs.frozen
class Page:
    """One read for a peer (see :meth:`StoreBackend.read_page`)."""

    changes: list[Change]
    upto: int  # the last version the page completes (or, with ``resume``, is inside of)
    complete: bool  # nothing after ``upto`` at read time
    resume: tuple[int, str, bytes, str] | None  # where the rest of version ``upto`` starts


@attrs.frozen
class PeerPosition:
    """What the relay recorded for one peer."""

    site_id: bytes
    pushed_upto: int
    received_upto: int
    last_seen: float | None


@attrs.frozen
class PageRequest:
    """A read for a peer: what :meth:`StoreBackend.read_page` was asked."""

    cursor: int
    exclude_site: bytes | None
    max_cells: int
    max_bytes: int
    split: bool
    after: tuple[int, str, bytes, str] | None


@attrs.frozen
class Push:
    """A pushed unit to merge: what :meth:`StoreBackend.merge_push` was given."""

    site_id: bytes
    upto: int
    changes: Sequence[Change]
    meta: Mapping[str, Any] | None
    announced_only: bool


# ---------------------------------------------------------------------------- schema


def plan_schema(
    known: Mapping[str, TableSchema], unconstrained: set[str], schema: Mapping[str, TableSchema]
) -> tuple[str | None, dict[str, TableSchema]]:
    """What recording a peer's announced ``schema`` changes in a store that has ``known``
    (``unconstrained``: tables recorded before constraints were announced).

    Bounded: at most ``MAX_TABLES`` tables per store and ``MAX_COLUMNS`` columns per table,
    names of at most ``MAX_NAME`` bytes.

    Returns:
        ``(problem, new)``: why the schema is incompatible (nothing to record then), or None
        and the table entries to write (empty: nothing new).
    """
    new: dict[str, TableSchema] = {}
    for table, s in schema.items():
        if len(table.encode()) > MAX_NAME or any(
            len(c.encode()) > MAX_NAME for c in (*s.pk, *s.columns)
        ):
            return f"a table or column name is longer than {MAX_NAME} bytes", {}
        have = known.get(table)
        if have is None:
            if len(s.columns) > MAX_COLUMNS:
                return f"table {quote(table)} announces more than {MAX_COLUMNS} columns", {}
            new[table] = TableSchema(
                s.pk,
                tuple(sorted(set(s.columns))),
                tuple(sorted(set(s.notnull) & set(s.columns))),
                s.integer_key,
            )
            continue
        if list(have.pk) != list(s.pk):
            return (
                f"table {quote(table)}: primary key is {list(have.pk)} in this store but "
                f"{list(s.pk)} on this device; the schemas are incompatible"
            ), {}
        cols = set(have.columns) | set(s.columns)
        # A constraint holds only while every announcing device declares it: what one device
        # can store, the relay accepts (the others set it aside). A table recorded before
        # constraints were announced takes them from its next announcement.
        legacy = table in unconstrained
        if legacy:
            have = TableSchema(have.pk, have.columns, s.notnull, s.integer_key)
        notnull = tuple(sorted(set(have.notnull) & set(s.notnull) & cols))
        intkey = have.integer_key and s.integer_key
        if (
            legacy
            or cols != set(have.columns)
            or notnull != have.notnull
            or intkey != have.integer_key
        ):
            if len(cols) > MAX_COLUMNS:
                return f"table {quote(table)} would have more than {MAX_COLUMNS} columns", {}
            new[table] = TableSchema(have.pk, tuple(sorted(cols)), notnull, intkey)
    if new and len(set(known) | set(new)) > MAX_TABLES:
        return f"this store would have more than {MAX_TABLES} tables", {}
    return None, new


# ---------------------------------------------------------------------------- pushed units


def drop_reserved(
    changes: Sequence[Change], reserved: bytes | None, site_id: bytes
) -> Sequence[Change]:
    """``changes`` without those claiming the reactor's own site ``reserved``.

    Only the reactor writes under it. A device re-pushing what it merged from the reactor (a
    full push after a restore) is honest, a forged "server answer" is not, and the two look
    alike: neither enters the store (the reactor's own writes are there already, or it writes
    them again), and the rest of the unit is merged."""
    if reserved is None or not any(c.site_id == reserved for c in changes):
        return changes
    kept = [c for c in changes if c.site_id != reserved]
    log.info(
        "relay.push.reactor_site_ignored site=%s changes=%d",
        site_id.hex(),
        len(changes) - len(kept),
    )
    return kept


def check_unit(
    changes: Sequence[Change], schema: Mapping[str, TableSchema], announced_only: bool
) -> dict[RowKey, list[Change]]:
    """Refuse a unit devices could not apply; else its changes grouped by row.

    Every key is checked the way devices will apply it: no NULL, no NaN, text that is valid
    UTF-8 (no lone surrogates), and the arity of the table's announced key; names are at most
    ``MAX_NAME`` bytes. ``announced_only``: also refuse changes of tables or columns no hello
    announced, NULL in a column every announcing device declares NOT NULL, and keys that are
    not integers where every announcing device keys the table by its rowid.

    Raises:
        InvalidChangeError: naming the first failing change (in push order).
    """
    # Group by row, checking each distinct (table, column) once (at its first change).
    groups: dict[RowKey, list[Change]] = {}
    first: dict[tuple[str, str], int] = {}
    for i, c in enumerate(changes):
        tc = (c[0], c[2])
        if tc not in first:
            first[tc] = i
        rk = (c[0], c[1])
        g = groups.get(rk)
        if g is None:
            groups[rk] = [c]
        else:
            g.append(c)
    for (table, cid), i in first.items():
        if len(table.encode()) > MAX_NAME or len(cid.encode()) > MAX_NAME:
            raise InvalidChangeError(f"change #{i}: name longer than {MAX_NAME} bytes")
    arity = {t: len(s.pk) for t, s in schema.items()}
    if announced_only:
        _check_announced(changes, first, schema)
    for table, pk in groups:
        if small_int_key(pk) is not None and arity.get(table, 1) == 1:
            continue  # a non-negative integer: passes every check below
        _check_key(table, pk, schema.get(table) if announced_only else None, arity.get(table))
    return groups


def _check_announced(
    changes: Sequence[Change],
    first: Mapping[tuple[str, str], int],
    schema: Mapping[str, TableSchema],
) -> None:
    """Refuse the first change (in push order) of a table or column no hello announced, or
    holding NULL in a column every announcing device declares NOT NULL."""
    bad: list[tuple[int, str]] = []
    notnull: set[tuple[str, str]] = set()
    for (table, cid), i in first.items():
        ts = schema.get(table)
        if ts is None:
            bad.append(
                (
                    i,
                    f"change #{i}: table {quote(table)} was not announced in a hello; "
                    "a device announces every table it pushes",
                )
            )
        elif cid != SENTINEL and cid not in ts.columns:
            bad.append(
                (i, f"change #{i}: table {quote(table)} has no announced column {quote(cid)}")
            )
        elif cid in ts.notnull:
            notnull.add((table, cid))
    if notnull:
        for i, c in enumerate(changes):
            if c[3] is None and (c[0], c[2]) in notnull:
                bad.append(
                    (
                        i,
                        f"change #{i}: table {quote(c[0])}, column {quote(c[2])} is NOT "
                        "NULL on every device that announced the table; no device could "
                        "apply NULL",
                    )
                )
                break
    if bad:
        raise InvalidChangeError(min(bad)[1])


def _check_key(table: str, pk: bytes, announced: TableSchema | None, arity: int | None) -> None:
    """Refuse a row key devices cannot apply (it would stop every device of the store on
    merge). ``announced``: the table's schema when announced tables are enforced."""
    try:
        key = unpack_pk(pk)
    except PackError as exc:
        raise InvalidChangeError(f"table {quote(table)}: {exc}") from None
    if not key or None in key:
        raise InvalidChangeError(f"table {quote(table)}: pk {pk.hex()[:64]} is empty or has NULL")
    if announced is not None and announced.integer_key and type(key[0]) is not int:
        raise InvalidChangeError(
            f"table {quote(table)}: pk {pk.hex()[:64]} is not an integer, and every "
            "device that announced the table keys it by its rowid (INTEGER PRIMARY KEY)"
        )
    for v in key:
        if isinstance(v, float) and v != v:
            raise InvalidChangeError(
                f"table {quote(table)}: pk {pk.hex()[:64]} holds NaN, which SQLite stores as NULL"
            )
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidChangeError(
                    f"table {quote(table)}: pk {pk.hex()[:64]} holds text that is not valid UTF-8"
                ) from None
    if arity is not None and len(key) != arity:
        raise InvalidChangeError(
            f"table {quote(table)}: pk {pk.hex()[:64]} has {len(key)} values, the table's "
            f"primary key has {arity} columns"
        )


# ---------------------------------------------------------------------------- merge


def row_state(rows: Iterable[tuple[Any, ...]]) -> RowState:
    """A stored row's state from its cells ``(cid, val, col_version, site_id, cl, seq,
    version)`` (at least one)."""
    st: RowState | None = None
    values: dict[str, SqlValue] = {}
    for cid, val, cv, site, cl, seq, version in rows:
        if st is None:
            st = RowState(cl, cl % 2 == 1)
        if cid == SENTINEL:
            st.sentinel = (cv, version, site, seq)
        else:
            st.cells[cid] = (cv, version, site, seq)
            values[cid] = val
    assert st is not None, "a stored row has at least one cell"
    st.values = values
    return st


@attrs.define
class Merged:
    """What merging a unit writes: ``cells`` as ``(table, pk, cid, val, col_version, site_id,
    cl, seq, version, via)`` replace every stored cell of the ``rewritten`` rows (rows new to
    the store only add cells); ``wins``: how many changes won."""

    wins: int
    rewritten: list[RowKey]
    cells: list[tuple[Any, ...]]


def merge_groups(
    groups: Mapping[RowKey, list[Change]],
    states: Mapping[RowKey, RowState],
    via_of: Mapping[tuple[str, bytes, str], bytes | None],
    version: int,
    site_id: bytes,
) -> Merged:
    """Merge a checked unit's ``groups`` into the stored rows' ``states`` (which the merge
    changes) as relay version ``version``, pushed by ``site_id``. ``via_of``: the pushing site
    of each stored cell, kept for the cells the merge does not replace."""
    out = Merged(0, [], [])
    cells = out.cells
    for (table, pk), group in groups.items():
        st = states.get((table, pk))
        if st is None:
            if all_fresh_cells(group):  # a new row's cells: every change wins
                out.wins += len(group)
                cells += [
                    (table, pk, c[2], c[3], c[4], c[6], 1, c[8], version, site_id) for c in group
                ]
                continue
            st = RowState()
        for c in group:
            if apply_change(st, c, {}):
                out.wins += 1
        if not st.changed:
            continue
        if (table, pk) in states:
            out.rewritten.append((table, pk))
        for cid, clock in st.cells.items():
            if clock is None:
                continue
            dbv = version if clock[1] == MERGE_VERSION else clock[1]
            via = site_id if dbv == version else via_of.get((table, pk, cid))
            cells.append(
                (table, pk, cid, st.values.get(cid), clock[0], clock[2], st.cl, clock[3], dbv, via)
            )
        if st.sentinel is not None:
            s = st.sentinel
            dbv = version if s[1] == MERGE_VERSION else s[1]
            via = site_id if dbv == version else via_of.get((table, pk, SENTINEL))
            cells.append((table, pk, SENTINEL, None, st.cl, s[2], st.cl, s[3], dbv, via))
    return out


# ---------------------------------------------------------------------------- reads


def take_versions(
    rows: Iterable[_T],
    version_of: Callable[[_T], int],
    size_of: Callable[[_T], int],
    max_cells: int,
    max_bytes: int,
    split: bool,
) -> tuple[list[_T], bool, int | None]:
    """Cut ``rows`` (ordered by version) to whole versions within a budget of cells and bytes.

    Reading stops at the first version boundary past the budget; a first version larger than
    the budget is taken whole, or, with ``split``, left to be read in parts.

    Returns:
        ``(taken, stopped, in_parts)``: ``stopped``: rows after the last one taken exist;
        ``in_parts``: the first version, over the budget alone, to read in parts (``split``;
        ``taken`` is then to be ignored).
    """
    taken: list[_T] = []
    size = 0
    start = 0  # index in taken where the version being read began
    for row in rows:
        version = version_of(row)
        if taken and version != version_of(taken[-1]):
            if len(taken) > max_cells or size > max_bytes:
                return taken, True, None  # the budget ran out exactly at a version boundary
            start = len(taken)
        taken.append(row)
        size += size_of(row)
        if len(taken) > max_cells or size > max_bytes:
            if start > 0:
                del taken[start:]  # drop the partly read version: whole versions only
                return taken, True, None
            if split:
                return taken, False, version
    return taken, False, None


def take_part(
    rows: Iterable[_T], size_of: Callable[[_T], int], max_cells: int, max_bytes: int
) -> tuple[list[_T], bool]:
    """The first rows of one version's part (in key order) within the budget (at least one),
    and whether rows were left for a next part."""
    taken: list[_T] = []
    size = 0
    for row in rows:
        if taken and (len(taken) >= max_cells or size >= max_bytes):
            return taken, True
        taken.append(row)
        size += size_of(row)
    return taken, False


def cell_size(key: bytes, value_bytes: int | None) -> int:
    """What one cell counts against a read's byte budget."""
    return 120 + len(key) + (value_bytes or 0)


# ---------------------------------------------------------------------------- the horizon

DAY = 86_400.0
DEFAULT_MAX_OFFLINE = 180 * DAY
"""How long a device may stay away before the horizon passes it (a store's default)."""
DEPARTING_WINDOW = 7 * DAY
"""A device within this much of its store's ``max_offline`` is *about to depart* (metrics)."""


class DeviceInfo(NamedTuple):
    """What the relay keeps of one device of a store (``stores --details``, :class:`GcStats`)."""

    site_id: bytes
    pushed_upto: int
    received_upto: int
    last_seen: float | None
    departed: bool


@attrs.frozen
class Collected:
    """What one :meth:`StoreBackend.collect` did: the store's ``horizon`` now, how many
    tombstones it ``collected`` (moved to graves) and how many devices ``departed`` (their
    positions forgotten, only their site binding kept)."""

    horizon: int
    collected: int
    departed: int


@attrs.frozen
class GcStats:
    """A store's garbage-collection figures (metrics, ``stores --details``)."""

    tombstones: int  # deleted rows still held as full tombstones (above the horizon)
    graves: int  # collected tombstones
    horizon: int
    horizon_age: float  # seconds since the device holding the horizon back was last seen
    devices: list[DeviceInfo]
    about_to_depart: int  # active devices within DEPARTING_WINDOW of max_offline
    max_offline: float = DEFAULT_MAX_OFFLINE


def active(device: DeviceInfo, now: float, max_offline: float) -> bool:
    """Whether a device still holds the horizon back: not departed, seen within the window."""
    return (
        not device.departed
        and device.last_seen is not None
        and device.last_seen >= now - max_offline
    )


def compute_horizon(
    devices: Iterable[DeviceInfo],
    head: int,
    stored: int,
    now: float,
    max_offline: float,
    *,
    exclude: bytes | None = None,
    connected: Iterable[bytes] = (),
) -> int:
    """The store's horizon: the lowest ``received_upto`` of the devices seen within
    ``max_offline`` (the reactor's site ``exclude`` left out; ``connected`` sites count as
    seen now), capped at ``head``; ``head`` if there is none. Never below ``stored`` (the
    horizon never moves back)."""
    here = set(connected)
    lowest = head
    for d in devices:
        if d.site_id == exclude:
            continue
        if d.site_id in here or active(d, now, max_offline):
            lowest = min(lowest, d.received_upto)
    return max(stored, min(lowest, head))


def departing(devices: Iterable[DeviceInfo], now: float, max_offline: float) -> list[bytes]:
    """Site ids of the devices to mark departed now: not departed, last seen before
    ``now - max_offline`` (a site bound but never seen holds nothing back: left as it is)."""
    return [
        d.site_id
        for d in devices
        if not d.departed and d.last_seen is not None and d.last_seen < now - max_offline
    ]


def gc_figures(
    devices: list[DeviceInfo],
    head: int,
    horizon: int,
    now: float,
    max_offline: float,
    exclude: bytes | None,
) -> tuple[float, int]:
    """``(horizon_age, about_to_depart)`` of a store (see :class:`GcStats`): the age of the
    last sighting of the active device with the lowest ``received_upto`` below ``head``
    (0 if none), and how many active devices are within :data:`DEPARTING_WINDOW` of
    ``max_offline``."""
    live = [d for d in devices if d.site_id != exclude and active(d, now, max_offline)]
    behind = [d for d in live if d.received_upto < head]
    age = 0.0
    if behind:
        holder = min(behind, key=lambda d: (d.received_upto, d.last_seen or 0.0))
        age = max(0.0, now - (holder.last_seen or now))
    soon = sum(
        1
        for d in live
        if d.last_seen is not None and d.last_seen < now - max_offline + DEPARTING_WINDOW
    )
    return age, soon


def grave_state(cl: int) -> RowState:
    """The state of a row held only as a collected tombstone: deleted, causal length ``cl``,
    no clock (a change of causal length <= ``cl`` loses, a higher one wins)."""
    return RowState(cl, False)


def check_max_offline(seconds: float) -> None:
    """Refuse a ``max_offline`` that is not a positive number of seconds."""
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise CrsyncError(f"max_offline must be a positive number of seconds, not {seconds!r}")
