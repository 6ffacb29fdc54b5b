"""A simulated store for the tombstone-collection tests: real device databases, a real relay
store file, a simulated clock, and the sync steps a Peer and the relay take (push own changes,
ack, catch up page by page, record what was received, learn the horizon), without sockets.

Two worlds run the same schedule: one collects (the relay's ``collect`` at the schedule's
moments, devices compacting below the horizon they learn), the *reference* never collects
anything. The tests compare them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
from crsync_relay.store import RelayStore

import crsync
from crsync import positions
from crsync.protocol import TableSchema

DAY = 86_400.0
MAX_OFFLINE = 180 * DAY
TABLE = "items"
DDL = f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, a TEXT, b INTEGER)"
SCHEMA = {TABLE: TableSchema(("id",), ("a", "b"))}
PEER_KEY = "sim"


class Clock:
    """Simulated wall-clock time: moves only when the schedule says so."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@attrs.define
class Device:
    db: crsync.Database
    epoch: str = ""
    push_upto: int = 0
    pull_upto: int = 0

    @property
    def site(self) -> bytes:
        return self.db.site_id


@attrs.define
class World:
    """A relay store and devices; ``collecting`` False makes the reference world."""

    relay: RelayStore
    devices: list[Device]
    clock: Clock
    collecting: bool
    max_cells: int = 7

    @classmethod
    def create(cls, root: Path, ndevices: int, *, collecting: bool) -> World:
        root.mkdir(parents=True, exist_ok=True)
        clock = Clock()
        relay = RelayStore(root / "s.store.sqlite3", clock=clock)
        relay.set_max_offline(MAX_OFFLINE)
        assert relay.check_schema(dict(SCHEMA)) is None
        devices = []
        for i in range(ndevices):
            db = crsync.connect(root / f"dev{i}.db")
            db.conn.execute(DDL)
            db.track(TABLE, integer_keys="app-assigned")
            devices.append(Device(db))
        return cls(relay, devices, clock, collecting)

    def close(self) -> None:
        for d in self.devices:
            d.db.close()
        self.relay.close()

    # ---------------------------------------------------------------- steps

    def write(self, i: int, key: int, column: str, value: Any) -> None:
        self.devices[i].db.conn.execute(
            f"INSERT INTO {TABLE} (id, {column}) VALUES (?, ?) "
            f"ON CONFLICT (id) DO UPDATE SET {column} = excluded.{column}",
            (key, value),
        )

    def delete(self, i: int, key: int) -> None:
        self.devices[i].db.conn.execute(f"DELETE FROM {TABLE} WHERE id = ?", (key,))

    def tick(self, days: float) -> None:
        self.clock.now += days * DAY

    def collect(self) -> None:
        if self.collecting:
            self.relay.collect()

    def sync(self, i: int) -> None:
        """One connection of device ``i``: hello/welcome, push its own changes (one unit),
        then catch up page by page, then learn the horizon."""
        dev, relay = self.devices[i], self.relay
        if dev.epoch != relay.epoch:  # first contact: both positions start at 0
            dev.epoch, dev.push_upto, dev.pull_upto = relay.epoch, 0, 0
        upto, changes = dev.db.changes_since(dev.push_upto)
        own = [c for c in changes if c.site_id == dev.site]
        if upto > dev.push_upto:
            relay.merge_push(dev.site, upto, own)
            positions.record(dev.db, PEER_KEY, positions.PUSH, dev.epoch, upto)
            dev.push_upto = upto
        after = None
        while True:
            page = relay.read_page(dev.pull_upto, dev.site, self.max_cells, after=after)
            if page.resume is not None:  # a version read in parts: one unit, merged at once
                parts = list(page.changes)
                while page.resume is not None:
                    page = relay.read_page(
                        dev.pull_upto, dev.site, self.max_cells, after=page.resume
                    )
                    parts += page.changes
                changes_in_unit: Sequence[crsync.Change] = parts
            else:
                changes_in_unit = page.changes
            if page.upto > dev.pull_upto:
                positions.merge_and_record(
                    dev.db, list(changes_in_unit), PEER_KEY, dev.epoch, page.upto
                )
                dev.pull_upto = page.upto
                relay.record_received(dev.site, page.upto)
            if page.complete:
                break
        if self.collecting:
            positions.apply_horizon(dev.db, PEER_KEY, relay.horizon())

    # ---------------------------------------------------------------- observations

    def rows(self, i: int) -> list[tuple[Any, ...]]:
        return self.devices[i].db.conn.execute(f"SELECT * FROM {TABLE} ORDER BY id").fetchall()

    def causal_lengths(self, i: int) -> dict[int, int]:
        """Each key's causal length on device ``i`` (what a re-insert builds on)."""
        return dict(
            self.devices[i]
            .db.conn.execute(f"SELECT p0, cl FROM {TABLE}__crsync ORDER BY p0")
            .fetchall()
        )

    def relay_tombstones(self) -> list[tuple[bytes, int]]:
        """Uncollected tombstones on the relay: (pk, version)."""
        return self.relay.conn.execute(
            "SELECT pk, version FROM relay_cells WHERE cid = '-1' AND cl % 2 = 0"
        ).fetchall()
