"""Backend-neutral helpers of the store suite: changes, the whole feed, a store's state."""

from __future__ import annotations

from typing import Any

from crsync_relay.store_api import StoreBackend

from crsync import Change, pack_pk
from crsync.pack import SqlValue
from crsync.protocol import TableSchema

A = bytes([0xA] * 16)
B = bytes([0xB] * 16)
C = bytes([0xC] * 16)

SCHEMA = {
    "todos": TableSchema(("id",), ("data", "done", "title")),
    "notes": TableSchema(("a", "b"), ("body",)),
}


def cell(
    key: object,
    cid: str,
    val: SqlValue,
    col_version: int = 1,
    *,
    site: bytes = A,
    cl: int = 1,
    seq: int = 0,
    table: str = "todos",
    db_version: int = 1,
) -> Change:
    """One change for row ``key`` of ``table``."""
    keys = list(key) if isinstance(key, tuple) else [key]
    return Change(table, pack_pk(keys), cid, val, col_version, db_version, site, cl, seq)


def sentinel(key: object, cl: int, *, site: bytes = A, table: str = "todos") -> Change:
    """A row-existence record (``cl`` odd: create/resurrect, even: delete)."""
    return cell(key, "-1", None, cl, site=site, cl=cl, table=table)


def row(store: StoreBackend, key: object, table: str = "todos") -> dict[str, Any]:
    """``{cid: (value, col_version, cl)}`` of a row as the store holds it."""
    keys = list(key) if isinstance(key, tuple) else [key]
    return {cid: (v, cv, cl) for cid, v, cv, cl in store.row_cells(table, pack_pk(keys))}


def feed(store: StoreBackend, max_cells: int = 10**6) -> list[tuple[int, list[tuple[Any, ...]]]]:
    """Everything a peer at cursor 0 reads, page by page (whole versions), as
    ``[(version, sorted cell tuples)]`` in version order."""
    by_version: dict[int, list[tuple[Any, ...]]] = {}
    cursor = 0
    while True:
        page = store.read_page(cursor, None, max_cells)
        for c in page.changes:
            by_version.setdefault(c.db_version, []).append(c.as_tuple())
        assert page.upto >= cursor
        cursor = page.upto
        if page.complete:
            break
    return [(v, sorted(cs, key=repr)) for v, cs in sorted(by_version.items())]


def state(store: StoreBackend) -> list[tuple[Any, ...]]:
    """Every cell the store holds, with its relay version, sorted (the relay state)."""
    return sorted((c for _, cs in feed(store) for c in cs), key=repr)


def read_version_1_in_parts(
    store: StoreBackend, max_bytes: int = 50_000
) -> tuple[list[Change], Any, int]:
    """Page through the store from version 0 under a ``max_bytes`` budget while version 1 (one
    version larger than the budget) is read in parts, each page ending inside it: what the
    pages held, the last page and how many pages were read."""
    seen: list[Change] = []
    parts = 1
    page = store.read_page(0, None, max_cells=10**6, max_bytes=max_bytes)
    while page.resume is not None:
        assert page.upto == 1 and not page.complete
        seen += page.changes
        page = store.read_page(0, None, max_cells=10**6, max_bytes=max_bytes, after=page.resume)
        parts += 1
    seen += page.changes
    return seen, page, parts
