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

A *collected tombstone* (docs/protocol.md rule 11: a delete kept below the relay's horizon as
``(table, pk, cl)``, sent with the site id :data:`crsync.change.COLLECTED_SITE`, seq 0 and
db_version 0) is an even-``cl`` change like any delete: rule 2 applies unchanged, so it
decides exactly as the original tombstone would (nothing here compares sentinel clocks). Only
the sentinel it leaves names the zero site, which a store gives a site ordinal like any other.

The state is mutated in place; each call says whether the change won.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .change import SENTINEL, Change
from .pack import SqlValue
from .values import compare_values

MERGE_VERSION = -1
"""Placeholder db_version for clocks written by the merge in progress."""


Clock = tuple[int, int, bytes, int]
"""A cell or sentinel clock: (col_version, db_version, site id, seq)."""


class RowState:
    """What a replica knows of one row: causal length, sentinel, cell clocks and values."""

    __slots__ = (
        "cells",
        "changed",
        "cl",
        "exists",
        "initially_exists",
        "reset",
        "sentinel",
        "values",
        "written",
    )

    def __init__(self, cl: int = 0, exists: bool = False) -> None:
        self.cl = cl  # 0: never seen
        self.sentinel: Clock | None = None
        self.cells: dict[str, Clock | None] = {}
        self.values: dict[str, SqlValue] = {}
        self.exists = exists  # the base row exists
        self.initially_exists = exists
        self.reset = False  # the base row was deleted at some point during this merge
        self.written: set[str] = set()  # columns whose base value this merge set
        self.changed = False  # metadata changed


def all_fresh_cells(changes: Sequence[Change]) -> bool:
    """Whether every change is a cell (not ``-1``) of causal length 1, each of another column.

    Merged into a row the replica never saw, such a group (a plain insert elsewhere) has a
    known outcome by rules 4 and 5: every change wins, the row gets causal length 1 and no
    sentinel, and each cell keeps its change's col_version, site id, seq and value."""
    cids = set()
    for c in changes:
        if c[7] != 1 or c[2] == SENTINEL:
            return False
        cids.add(c[2])
    return len(cids) == len(changes)


def _resurrect(state: RowState, c: Change, defaults: Mapping[str, SqlValue]) -> None:
    if not state.exists:
        state.exists = True
        state.values = dict(defaults)
        state.written = set()
    cells = state.cells
    for cid, clock in cells.items():
        if clock is not None:
            cells[cid] = (0, MERGE_VERSION, clock[2], clock[3])
    state.cl = c.cl
    state.sentinel = (c.cl, MERGE_VERSION, c.site_id, c.seq)
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
    ccl = c.cl
    if ccl < local_cl:
        return False
    if ccl % 2 == 0:
        if ccl == local_cl:
            return False
        if state.exists:
            state.reset = True
        state.exists = False
        state.values = {}
        state.written = set()
        state.cl = ccl
        state.sentinel = (ccl, MERGE_VERSION, c.site_id, c.seq)
        cells = state.cells
        for cid in cells:
            cells[cid] = None
        state.changed = True
        return True
    cid = c.cid
    if cid == SENTINEL:
        if ccl == local_cl:
            return False
        _resurrect(state, c, defaults)
        return True
    if ccl > local_cl:
        if local_cl != 0 or ccl > 1:
            _resurrect(state, c, defaults)
        else:
            state.cl = 1
            if not state.exists:
                state.exists = True
                state.values = dict(defaults)
    else:
        local = state.cells.get(cid)
        if local is not None:
            lv = local[0]
            if c.col_version != lv:
                if c.col_version < lv:
                    return False
            elif compare_values(c.val, state.values.get(cid)) <= 0:
                return False
    if not state.exists:  # a live clock whose base row is missing: recreate it
        state.exists = True
        state.values = dict(defaults)
    state.values[cid] = c.val
    state.written.add(cid)
    state.cells[cid] = (c.col_version, MERGE_VERSION, c.site_id, c.seq)
    state.changed = True
    return True
