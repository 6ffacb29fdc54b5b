"""Tombstone collection never changes what devices converge to.

Random schedules of writes, deletes and key reuse on several devices, syncs, absences longer
than ``max_offline`` (a simulated clock: nothing sleeps) and relay collections at random
moments run twice: in a world that collects (the relay's horizon, collected tombstones,
departed devices; devices compacting below the horizon) and in a reference world that never
collects anything. Every device of both worlds converges to the same rows and the same causal
lengths, and no tombstone at or below the final horizon survives on the relay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .sim import World

NDEVICES = 3
KEYS = st.integers(0, 3)  # few keys: deletes are followed by key reuse
DEVICE = st.integers(0, NDEVICES - 1)

WRITE = st.tuples(st.just("write"), DEVICE, KEYS, st.sampled_from(["a", "b"]), st.integers(0, 3))
DELETE = st.tuples(st.just("delete"), DEVICE, KEYS)
SYNC = st.tuples(st.just("sync"), DEVICE)
# A round: which devices are around (the others are away), what they edit (edits of devices
# away are made offline), how much time passes after it (steps that matter against
# max_offline = 180 days), and whether the relay collects at its end.
ROUND = st.tuples(
    st.sets(DEVICE, max_size=NDEVICES),
    st.lists(st.one_of(WRITE, DELETE, WRITE, SYNC), max_size=6),
    st.sampled_from([0, 1, 30, 150, 200, 400]),
    st.booleans(),
)
ROUNDS = st.lists(ROUND, max_size=10)


def run(world: World, rounds: list[tuple[Any, ...]]) -> None:
    for around, edits, days, collect in rounds:
        for i in sorted(around):
            world.sync(i)
        for op in edits:
            if op[0] == "write":
                world.write(op[1], op[2], op[3], f"v{op[4]}" if op[3] == "a" else op[4])
            elif op[0] == "delete":
                world.delete(op[1], op[2])
            elif op[1] in around:
                world.sync(op[1])
        for i in sorted(around):
            world.sync(i)
        world.tick(days)
        if collect:
            world.collect()
    # Everyone comes back (some after more than max_offline) and syncs until quiet.
    for _ in range(2):
        for i in range(NDEVICES):
            world.sync(i)
    world.collect()
    for i in range(NDEVICES):
        world.sync(i)


@pytest.mark.slow
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=ROUNDS)
def test_collecting_tombstones_converges_like_a_store_that_never_collects(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[tuple[Any, ...]]
) -> None:
    root: Path = tmp_path_factory.mktemp("gc")
    gc = World.create(root / "gc", NDEVICES, collecting=True)
    ref = World.create(root / "ref", NDEVICES, collecting=False)
    try:
        run(gc, rounds)
        run(ref, rounds)
        expected = ref.rows(0)
        for i in range(NDEVICES):
            assert ref.rows(i) == expected, "the reference world itself did not converge"
            assert gc.rows(i) == expected, f"device {i} diverged from the reference"
            assert gc.causal_lengths(i) == ref.causal_lengths(i), (
                f"device {i}: causal lengths differ (a re-insert would be judged differently)"
            )
        horizon = gc.relay.horizon()
        assert horizon == gc.relay.head, "everyone synced: the horizon reaches the head"
        assert [v for _, v in gc.relay_tombstones() if v <= horizon] == []
    finally:
        gc.close()
        ref.close()
