"""The merge rules of cr-sqlite 0.16, as pure functions over one row's state (no I/O).

Rules, applied to one incoming change ``C`` for a row whose local causal length is ``L``
(0 if the row was never seen, else the row's ``cl``; a row with cells and no sentinel has 1):

1. ``C.cl < L``: ignored (an older incarnation of the row cannot win anything).
2. ``C.cl`` even (a delete): ignored if ``C.cl == L``; otherwise the row is deleted, its
   sentinel becomes ``C``'s and every cell clock is dropped.
3. ``C.cid == "-1"`` with odd ``C.cl`` (create/resurrect): ignored if ``C.cl == L``; otherwise
   the row is resurrected: it exists again (other columns keep their values if it was alive,
   take their defaults if not), every existing cell clock is zeroed (col_version 0, re-stamped
   with this merge's db_version) and the sentinel becomes ``C``'s.
4. A cell with odd ``C.cl``: if ``C.cl > L`` the row is first resurrected as in 3 (except a
   never-seen row arriving with ``cl == 1``, which gets no sentinel), and the cell wins
   outright. Otherwise (``C.cl == L``) the cell wins if the local cell has no clock, or a lower
   col_version, or the same col_version and a value that loses to ``C.val`` in cr-sqlite's
   value order (:func:`crsync.values.compare_values`). Ties keep the local cell.
5. A winning write keeps ``C``'s col_version, site id and seq, and is stamped with this merge's
   local db_version (:data:`MERGE_VERSION`, resolved by the caller).

The state is mutated in place; each call says whether the change won.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .change import SENTINEL, Change
from .pack import SqlValue
from .values import compare_values

MERGE_VERSION = -1
"""Placeholder db_version for clocks written by the merge in progress."""


@attrs.define(slots=True)
class Clock:
    """A cell or sentinel clock."""

    col_version: int
    db_version: int
    site: bytes
    seq: int


@attrs.define(slots=True)
class RowState:
    """What a replica knows of one row: causal length, sentinel, cell clocks and values."""

    cl: int = 0  # 0: never seen
    sentinel: Clock | None = None
    cells: dict[str, Clock | None] = attrs.Factory(dict)
    values: dict[str, SqlValue] = attrs.Factory(dict)
    exists: bool = False  # the base row exists
    # bookkeeping for the writer
    initially_exists: bool = False
    reset: bool = False  # the base row was deleted at some point during this merge
    written: set[str] = attrs.Factory(set)  # columns whose base value this merge set
    changed: bool = False  # metadata changed


def _resurrect(state: RowState, c: Change, defaults: Mapping[str, SqlValue]) -> None:
    if not state.exists:
        state.exists = True
        state.values = dict(defaults)
        state.written = set()
    for cid, clock in state.cells.items():
        if clock is not None:
            state.cells[cid] = Clock(0, MERGE_VERSION, clock.site, clock.seq)
    state.cl = c.cl
    state.sentinel = Clock(c.cl, MERGE_VERSION, c.site_id, c.seq)
    state.changed = True


def apply_change(state: RowState, c: Change, defaults: Mapping[str, SqlValue]) -> bool:
    """Merge one change into a row's state.

    Args:
        state: the row, mutated in place.
        c: a validated change for this row.
        defaults: the value each column takes when the row is created by a merge.

    Returns:
        True if the change won (changed data or metadata).
    """
    local_cl = state.cl
    if c.cl < local_cl:
        return False
    if c.cl % 2 == 0:
        if c.cl == local_cl:
            return False
        if state.exists:
            state.reset = True
        state.exists = False
        state.values = {}
        state.written = set()
        state.cl = c.cl
        state.sentinel = Clock(c.cl, MERGE_VERSION, c.site_id, c.seq)
        for cid in state.cells:
            state.cells[cid] = None
        state.changed = True
        return True
    if c.cid == SENTINEL:
        if c.cl == local_cl:
            return False
        _resurrect(state, c, defaults)
        return True
    needs_resurrect = c.cl > local_cl
    if needs_resurrect:
        if local_cl != 0 or c.cl > 1:
            _resurrect(state, c, defaults)
        else:
            state.cl = 1
            if not state.exists:
                state.exists = True
                state.values = dict(defaults)
        wins = True
    else:
        local = state.cells.get(c.cid)
        if local is None:
            wins = True
        elif c.col_version != local.col_version:
            wins = c.col_version > local.col_version
        else:
            wins = compare_values(c.val, state.values.get(c.cid)) > 0
    if not wins:
        return False
    if not state.exists:  # a live clock whose base row is missing: recreate it
        state.exists = True
        state.values = dict(defaults)
    state.values[c.cid] = c.val
    state.written.add(c.cid)
    state.cells[c.cid] = Clock(c.col_version, MERGE_VERSION, c.site_id, c.seq)
    state.changed = True
    return True
