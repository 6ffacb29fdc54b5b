"""Operator repairs of one store, with the relay stopped: remove a poisoned cell or row, forget
a table's announced schema. Each refuses while a relay serves the data directory (or, given a
``postgresql://`` URL, while a relay node serves the database)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

from crsync.errors import CrsyncError
from crsync.pack import pack_pk

from .datadir import DataDir
from .store import RelayStore
from .store_api import StoreBackend


@contextlib.contextmanager
def stopped_store(data_dir: Path | str, store: str) -> Iterator[StoreBackend]:
    """Open an existing store while holding the data directory's relay lock (a
    ``postgresql://`` URL instead: while no relay node serves the database)."""
    if isinstance(data_dir, str):
        from .pg_store import PgDatabase

        with PgDatabase(data_dir, max_size=2, create=False) as db:
            db.require_stopped()
            yield db.open_store(store, create=False)
        return
    layout = DataDir(data_dir)
    path = layout.existing_store(store)
    with layout.exclusive(f"a relay is serving {data_dir}; stop it first"):
        s = RelayStore(path, create=False)
        try:
            yield s
        finally:
            s.close()


def parse_key(key_json: str | None, pk_hex: str | None) -> bytes:
    """A packed primary key from ``--key`` (a JSON array of values) or ``--pk-hex``."""
    if (key_json is None) == (pk_hex is None):
        raise CrsyncError("give exactly one of --key (JSON array) and --pk-hex")
    if pk_hex is not None:
        try:
            return bytes.fromhex(pk_hex)
        except ValueError:
            raise CrsyncError(f"--pk-hex {pk_hex!r} is not hexadecimal") from None
    assert key_json is not None
    try:
        values = json.loads(key_json)
    except json.JSONDecodeError as exc:
        raise CrsyncError(f"--key is not JSON: {exc}") from None
    if not isinstance(values, list) or not values:
        raise CrsyncError('--key must be a JSON array of the key\'s values, e.g. ["t1"]')
    return pack_pk(values)


def remove(data_dir: Path | str, store: str, table: str, pk: bytes, column: str | None) -> int:
    """Remove a cell (or, without ``column``, a row's every cell) from a stopped store."""
    with stopped_store(data_dir, store) as s:
        n = s.remove_cells(table, pk, column)
    if n == 0:
        what = f"column {column!r} of " if column else ""
        raise CrsyncError(f"store {store!r} has no {what}row {pk.hex()} in table {table!r}")
    return n


def forget_table(data_dir: Path | str, store: str, table: str) -> int:
    """Forget a table's announced schema and cells in a stopped store."""
    with stopped_store(data_dir, store) as s:
        return s.forget_table(table)
