"""The hub collects every open store when it opens and every ``gc_interval`` (trio's mock
clock, moved by hand: no real waiting), with the stores' injected wall clock, and publishes
the figures as metrics."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing
from crsync_relay.hub import Hub, HubLimits
from crsync_relay.store_rules import DAY

from crsync import Change, pack_pk

A = bytes([0xA] * 16)
B = bytes([0xB] * 16)


class WallClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _cell(key: int, cid: str, cl: int, site: bytes = A) -> Change:
    return Change("t", pack_pk([key]), cid, None if cid == "-1" else "x", cl, 1, site, cl, 0)


def _value(hub: Hub, name: str) -> float:
    v = hub.metrics.registry.get_sample_value(name)
    assert v is not None, name
    return v


async def _next_round(hub: Hub, clock: trio.testing.MockClock, jump: float) -> None:
    """Move the mock clock by ``jump`` seconds and wait for the collector's round to end."""
    done = hub.gc_round_done
    clock.jump(jump)
    with trio.fail_after(30):
        await done.wait()


async def test_open_stores_are_collected_when_opened_and_every_interval(
    tmp_path: Path, mock_clock: trio.testing.MockClock
) -> None:
    wall = WallClock()
    hub = Hub(tmp_path, HubLimits(gc_interval=3600, max_offline=30 * DAY), clock=wall)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hub.collector)
        opened = hub.gc_round_done
        h = await hub.acquire("s")
        with trio.fail_after(30):
            await opened.wait()  # the store was collected when it opened
        assert _value(hub, "crsync_relay_gc_runs_total") == 1
        await hub.push(h, A, 1, [_cell(1, "a", 1), _cell(2, "a", 1)])
        await hub.push(h, A, 2, [_cell(1, "-1", 2)])
        await hub.record_received(h, A, 2)
        await hub.record_received(h, B, 1)
        h.connected[B] = 1  # B is connected: seen now, whatever was recorded
        await _next_round(hub, mock_clock, 3600)
        assert _value(hub, "crsync_relay_gc_runs_total") == 2
        assert h.horizon == 1
        assert _value(hub, "crsync_relay_tombstones") == 1  # the delete is at version 2
        # 40 days pass on the wall clock: A was last seen 40 days ago, B is connected.
        wall.now += 40 * DAY
        await _next_round(hub, mock_clock, 3600)
        assert _value(hub, "crsync_relay_devices_departed") == 1  # A
        assert _value(hub, "crsync_relay_devices_departures_total") == 1
        assert h.horizon == 1
        del h.connected[B]
        await hub.record_received(h, B, 2)
        await _next_round(hub, mock_clock, 3600)
        assert h.horizon == 2
        assert _value(hub, "crsync_relay_graves") == 1
        assert _value(hub, "crsync_relay_tombstones") == 0
        assert _value(hub, "crsync_relay_tombstones_collected_total") == 1
        assert _value(hub, "crsync_relay_horizon_age_seconds") == 0
        hub.release(h)
        nursery.cancel_scope.cancel()
    await hub.close_all()
