"""The interface of one relay store, whatever holds it.

Two implementations: :class:`crsync_relay.store.RelayStore` (one SQLite file per store, the
embedded default) and :class:`crsync_relay.pg_store.PgRelayStore` (every store in one
PostgreSQL schema). The hub, sessions and reactors call only what :class:`StoreBackend` lists;
mypy checks both classes against it (see the end of this module). Every method is blocking:
the server calls them from worker threads, one call at a time per instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from crsync.change import Change
from crsync.pack import SqlValue
from crsync.protocol import TableSchema

from .store import Page, PeerPosition

__all__ = ["Page", "PeerPosition", "StoreBackend"]


class StoreBackend(Protocol):
    """One store: change rows merged with the CRDT rules, relay versions, peer positions.

    ``epoch`` names the store's history: it is minted when the store is created and changes
    when an operator rewrites the history (forget a table, restore a backup), so peers that
    remember another epoch re-push and re-read everything.
    """

    epoch: str

    @property
    def head(self) -> int:
        """The latest relay version (0: nothing merged yet)."""
        ...

    def close(self) -> None:
        """Release what this instance holds (a connection, a pool reference)."""
        ...

    # schema
    def check_schema(self, schema: dict[str, TableSchema]) -> str | None:
        """None if a peer's announced schema is compatible (recording additions), else why not."""
        ...

    def schema(self) -> dict[str, TableSchema]:
        """The union of the schemas peers announced."""
        ...

    def forget_table(self, table: str) -> int:
        """Operator repair: drop a table's schema and cells, new epoch; cells removed."""
        ...

    def remove_cells(self, table: str, pk: bytes, cid: str | None) -> int:
        """Operator repair: remove one cell or a whole row; cells removed."""
        ...

    # peers
    def peer(self, site_id: bytes) -> PeerPosition:
        """Recorded positions of a peer (zeros if never seen)."""
        ...

    def bind_site(self, site_id: bytes, site_key: bytes | None) -> str | None:
        """Check (and on first use record) the key a site id is bound to."""
        ...

    def record_received(self, site_id: bytes, upto: int) -> None:
        """A peer merged everything up to relay version ``upto``."""
        ...

    # reactor
    def relay_site(self) -> bytes | None:
        """The site id the store's reactor writes under (None until a reactor ran)."""
        ...

    def reactor_state(self) -> tuple[bytes, int]:
        """The reactor's site id (minted on first use) and its cursor."""
        ...

    def save_reactor_cursor(self, cursor: int) -> None:
        """The reactor handled every relay version up to ``cursor``."""
        ...

    def set_aside_reactor_batch(self, base: int, upto: int, reason: str) -> None:
        """Skip relay versions ``(base, upto]`` for the reactor, recording why."""
        ...

    def row_cells(self, table: str, pk: bytes) -> list[tuple[str, SqlValue, int, int]]:
        """``(cid, value, col_version, cl)`` of every cell the store holds for one row."""
        ...

    # merge and reads
    def merge_push(
        self,
        site_id: bytes,
        upto: int,
        changes: Sequence[Change],
        meta: Mapping[str, Any] | None = None,
        *,
        announced_only: bool = False,
    ) -> tuple[int, int]:
        """Merge a pushed unit durably (committed when it returns): ``(head, wins)``."""
        ...

    def changes_since(
        self,
        cursor: int,
        exclude_site: bytes | None,
        max_cells: int = 5000,
        max_bytes: int = 8 << 20,
    ) -> tuple[list[Change], int, bool]:
        """Whole versions after ``cursor``: ``(changes, upto, complete)``."""
        ...

    def read_page(
        self,
        cursor: int,
        exclude_site: bytes | None,
        max_cells: int = 5000,
        max_bytes: int = 8 << 20,
        *,
        split: bool = True,
        after: tuple[int, str, bytes, str] | None = None,
    ) -> Page:
        """What a peer at ``cursor`` lacks within a budget, a large version in parts."""
        ...

    # sizes
    def size_bytes(self) -> int:
        """Bytes the store occupies in its storage (operators' figure)."""
        ...

    def data_bytes(self) -> int:
        """Bytes the store's data counts against its quota (cheap: called on every push)."""
        ...

    def stats(self) -> dict[str, Any]:
        """Size and activity figures: epoch, head, cells, peers, last_activity, bytes."""
        ...


if TYPE_CHECKING:  # mypy checks that both implementations provide the interface
    from .pg_store import PgRelayStore
    from .store import RelayStore

    def _implementations(a: RelayStore, b: PgRelayStore) -> list[StoreBackend]:
        return [a, b]
