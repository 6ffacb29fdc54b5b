"""A small, independent, dict-based model of the CRDT (reference for property tests).

State of one replica: ``{key: Row}``; ``Row.cl`` is the causal length (odd alive, even dead),
``Row.cells`` maps column -> ``(col_version, value)``. Local writes follow the capture rules
(crdt-semantics.md §4 as crsync implements them); remote changes follow the merge rules of §6.
"""

from __future__ import annotations

import struct
from typing import Any

SENTINEL = "-1"


def rank(v: Any) -> int:
    if v is None:
        return 0
    if isinstance(v, bytes):
        return 1
    if isinstance(v, str):
        return 2
    if isinstance(v, float):
        return 3
    return 4


def cmp(a: Any, b: Any) -> int:
    ra, rb = rank(a), rank(b)
    if ra != rb:
        return ra - rb
    if a is None:
        return 0
    if isinstance(a, str):
        a, b = a.encode(), b.encode()
    return int(a > b) - int(a < b)


def canon(v: Any) -> Any:
    if isinstance(v, float):
        return ("real", struct.pack(">d", v))
    return (type(v).__name__, v)


class Row:
    __slots__ = ("cells", "cl")

    def __init__(self, cl: int) -> None:
        self.cl = cl
        self.cells: dict[str, tuple[int, Any]] = {}


class Replica:
    def __init__(self, columns: list[str], defaults: dict[str, Any]) -> None:
        self.columns = columns
        self.defaults = defaults
        self.rows: dict[tuple[Any, ...], Row] = {}

    # ------------------------------------------------------------ local writes

    def alive(self, key: tuple[Any, ...]) -> bool:
        r = self.rows.get(key)
        return r is not None and r.cl % 2 == 1

    def value(self, key: tuple[Any, ...], col: str) -> Any:
        cell = self.rows[key].cells.get(col)
        return cell[1] if cell is not None else self.defaults[col]

    def insert(self, key: tuple[Any, ...], vals: dict[str, Any]) -> None:
        r = self.rows.get(key)
        if r is not None and r.cl % 2 == 1:  # INSERT OR REPLACE of a live row
            for c in self.columns:
                old = r.cells.get(c)
                r.cells[c] = ((old[0] if old else 0) + 1, vals[c])
            return
        if r is None:
            r = self.rows[key] = Row(1)
        else:
            r.cl += 1
        r.cells = {c: (1, vals[c]) for c in self.columns}

    def update(self, key: tuple[Any, ...], col: str, val: Any) -> None:
        if not self.alive(key):
            return
        old = self.value(key, col)
        if rank(old) == rank(val) and cmp(old, val) == 0:
            return
        r = self.rows[key]
        cell = r.cells.get(col)
        r.cells[col] = ((cell[0] if cell else 0) + 1, val)

    def delete(self, key: tuple[Any, ...]) -> None:
        if not self.alive(key):
            return
        r = self.rows[key]
        r.cl += 1
        r.cells = {}

    def move(self, old: tuple[Any, ...], new: tuple[Any, ...]) -> None:
        """UPDATE of the primary key (old alive, new not alive)."""
        src = self.rows[old]
        moved = {}
        for c in self.columns:
            cell = src.cells.get(c)
            moved[c] = ((cell[0] if cell else 0) + 1, self.value(old, c))
        dst = self.rows.get(new)
        if dst is None:
            dst = self.rows[new] = Row(1)
        else:
            dst.cl += 1
        dst.cells = moved
        src.cl += 1
        src.cells = {}

    # ------------------------------------------------------------ merge

    def merge(self, key: tuple[Any, ...], cid: str, val: Any, cv: int, cl: int) -> None:
        r = self.rows.get(key)
        local = r.cl if r is not None else 0
        if cl < local:
            return
        if cl % 2 == 0:
            if cl == local:
                return
            r = self.rows[key] = Row(cl)
            return
        if cid == SENTINEL:
            if cl == local:
                return
            self._resurrect(key, cl)
            return
        if cl > local:
            if local != 0 or cl > 1:
                self._resurrect(key, cl)
            else:
                self.rows[key] = Row(1)
            win = True
        else:
            assert r is not None
            mine = r.cells.get(cid)
            win = mine is None or cv > mine[0] or (cv == mine[0] and cmp(val, mine[1]) > 0)
        if win:
            self.rows[key].cells[cid] = (cv, val)

    def _resurrect(self, key: tuple[Any, ...], cl: int) -> None:
        r = self.rows.get(key)
        if r is None:
            r = self.rows[key] = Row(cl)
        r.cells = {c: (0, v) for c, (_cv, v) in r.cells.items()}
        r.cl = cl

    # ------------------------------------------------------------ views

    def state(self) -> dict[tuple[Any, ...], tuple[int, dict[str, tuple[int, Any]]]]:
        return {
            k: (r.cl, {c: (cv, canon(v)) for c, (cv, v) in r.cells.items()})
            for k, r in self.rows.items()
        }

    def table(self) -> list[tuple[Any, ...]]:
        out = [
            tuple(canon(v) for v in k) + tuple(canon(self.value(k, c)) for c in self.columns)
            for k, r in self.rows.items()
            if r.cl % 2 == 1
        ]
        return sorted(out, key=repr)
