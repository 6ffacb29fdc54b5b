"""The interface of one relay store, whatever holds it.

Two implementations: :class:`crsync_relay.store.RelayStore` (one SQLite file per store, the
embedded default) and :class:`crsync_relay.pg_store.PgRelayStore` (every store in one
PostgreSQL schema). The hub, sessions and reactors call only what :class:`StoreBackend` lists;
both classes subclass it, and mypy checks them against it (see the end of this module). What
the two share beyond the rules of :mod:`crsync_relay.store_rules` is written here once, over
small backend hooks (``_read``, ``_merge``, ``_key_hash``, ``_bind_key``). Every method is
blocking: the server calls them from worker threads, one call at a time per instance.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from crsync.change import Change
from crsync.pack import SqlValue
from crsync.protocol import TableSchema

from .store_rules import (
    Collected,
    DeviceInfo,
    GcStats,
    Page,
    PageRequest,
    PeerPosition,
    Push,
)

__all__ = ["Collected", "DeviceInfo", "GcStats", "Page", "PeerPosition", "StoreBackend"]


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
        """Check a hello's claim to speak for ``site_id``; bind the site to its key on first use.

        Returns:
            None if the claim holds (or the site is not bound and no key is given: an older
            client), else why it does not.
        """
        digest = None if site_key is None else hashlib.sha256(site_key).digest()
        bound = self._key_hash(site_id)
        if bound is not None:
            if digest is None or not hmac.compare_digest(bound, digest):
                return (
                    f"site id {site_id.hex()} is bound to another device's key; a device "
                    "speaks only for its own site (a copied database gets a new site id: "
                    "crsync reset-site)"
                )
            return None
        if digest is not None and not hmac.compare_digest(self._bind_key(site_id, digest), digest):
            return f"site id {site_id.hex()} is bound to another device's key"  # bound first
        return None

    def _key_hash(self, site_id: bytes) -> bytes | None:
        """The sha256 of the key ``site_id`` is bound to (None: not bound)."""
        ...

    def _bind_key(self, site_id: bytes, digest: bytes) -> bytes:
        """Bind ``site_id`` to the key of sha256 ``digest`` unless it is bound already
        (another connection or node may just have bound it); the hash it is bound to."""
        ...

    def record_received(self, site_id: bytes, upto: int) -> None:
        """A peer merged everything up to relay version ``upto`` (seen now)."""
        ...

    def seen(self, site_id: bytes) -> None:
        """A device connected now: record it as seen, re-admitting it if it had departed."""
        ...

    def devices(self) -> list[DeviceInfo]:
        """Every site the store recorded, by site id."""
        ...

    # the horizon and collected tombstones (docs/concepts.md, "Tombstones and the horizon")
    def horizon(self) -> int:
        """The store's horizon (0 until the first :meth:`collect`); it never moves back."""
        ...

    def max_offline(self) -> float:
        """Seconds a device may stay away before the horizon passes it (the store's own
        setting, else the relay's default)."""
        ...

    def set_max_offline(self, seconds: float) -> None:
        """Set the store's ``max_offline`` (an operator's setting, kept in the store).

        Raises:
            CrsyncError: not a positive number of seconds.
        """
        ...

    def collect(self, connected: Collection[bytes] = ()) -> Collected:
        """One garbage collection, in one transaction, at the store's clock's now: the
        horizon is moved (``min(received_upto)`` of the devices seen within ``max_offline``,
        the reactor left out, ``connected`` sites counting as seen now; the head if none; never
        back), tombstones of versions up to it become collected tombstones, and devices not
        seen within ``max_offline`` depart: their positions are forgotten, their site binding
        is kept."""
        ...

    def gc_stats(self) -> GcStats:
        """Tombstones, collected tombstones, the horizon and its age, the devices (the
        reactor's site left out) and how many are about to depart."""
        ...

    def next_version(self, cursor: int) -> int | None:
        """The first relay version after ``cursor`` holding any cell or collected tombstone."""
        ...

    def remaining(self, cursor: int, after: tuple[int, str, bytes, str] | None = None) -> int:
        """Cells and collected tombstones of versions after ``cursor`` (``after``: less those
        of version ``after[0]`` up to key ``after[1:]``, which the peer holds)."""
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
        """Merge a pushed unit (whole transactions) and record the peer's pushed position.

        ``meta``: ``relay_meta`` entries to set in the same transaction (a reactor's cursor).
        ``announced_only``: refuse changes of tables or columns no hello announced (pushes
        from peers: an honest device announces every table it pushes).

        Every key is checked the way devices will apply it (:func:`store_rules.check_unit`). A
        change that fails is refused with the whole unit (nothing stored): what the relay
        accepts, devices can apply. Durable (committed) when it returns.

        Returns:
            ``(head, wins)``: the relay version after the merge and how many changes won.

        Raises:
            InvalidChangeError: a change is unacceptable; nothing was stored.
        """
        if not changes and not meta and self.peer(site_id).pushed_upto >= upto:
            return self.head, 0  # an empty push that tells nothing new: no write
        return self._merge(Push(site_id, upto, changes, meta, announced_only))

    def _merge(self, push: Push) -> tuple[int, int]:
        """:meth:`merge_push` past its check for an empty push."""
        ...

    def changes_since(
        self,
        cursor: int,
        exclude_site: bytes | None,
        max_cells: int = 5000,
        max_bytes: int = 8 << 20,
    ) -> tuple[list[Change], int, bool]:
        """Changes of relay versions after ``cursor``, whole versions at a time, leaving out
        the cells site ``exclude_site``'s connections pushed (whatever author they claim; cells
        stored before the pushing site was recorded fall back to their author).

        Collected tombstones come out as ``Change(table, pk, "-1", None, cl, 0,
        COLLECTED_SITE, cl, 0)``, in version order with the cells (never left out).

        Reads stop at the first version boundary past ``max_cells`` cells or ``max_bytes``
        bytes of values and keys (rows are streamed, never all loaded); a first version larger
        than that is read whole, being one atomic unit (see :meth:`read_page` to read it in
        parts).

        Returns:
            ``(changes, upto, complete)``: ``upto`` is the last version fully included;
            ``complete`` is true if nothing after ``upto`` exists (at read time).
        """
        page = self.read_page(cursor, exclude_site, max_cells, max_bytes, split=False)
        return page.changes, page.upto, page.complete

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
        """What a peer at ``cursor`` lacks, within a budget of cells and bytes.

        Whole versions while they fit. A first version larger than the budget is read in
        parts when ``split`` (memory per reader stays bounded): the page then ends inside it
        and ``resume`` says where the next part starts (pass it as ``after``); the parts of
        one version form one atomic unit for the receiver. ``after``: continue such a version.
        One consistent snapshot of the store.
        """
        return self._read(PageRequest(cursor, exclude_site, max_cells, max_bytes, split, after))

    def _read(self, request: PageRequest) -> Page:
        """:meth:`read_page`, in one read snapshot."""
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
