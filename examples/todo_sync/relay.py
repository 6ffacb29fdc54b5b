"""A throw-away ``crsync-relay`` on loopback for the demo and the tests.

It is ``examples/_demo.py``'s :func:`demo_relay` with a day-long token: a fresh secret, a
relay on a free port and a token for one store.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from examples._demo import DemoRelay as LocalRelay
from examples._demo import demo_relay

__all__ = ["LocalRelay", "local_relay"]


@contextmanager
def local_relay(workdir: Path, store: str = "todos") -> Iterator[LocalRelay]:
    """Run a relay with a fresh secret under ``workdir`` for the duration of the block."""
    with demo_relay(workdir, store, "todo_sync", ttl=86400) as relay:
        yield relay
