"""A throw-away ``crsync-relay`` on loopback for the demo and the tests.

It generates a secret, starts ``python -m crsync_relay.cli serve`` on a free port, waits for
its ``relay.listening ... port=N`` log line and mints a token for one store.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crsync_relay.auth import issue_token
from crsync_relay.process import relay_process

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"relay\.listening .*\bport=(\d+)")


@dataclass(frozen=True)
class LocalRelay:
    """A running relay: where to connect and a token for ``store``."""

    url: str
    store: str
    token: str
    log: list[str]


@contextmanager
def local_relay(workdir: Path, store: str = "todos") -> Iterator[LocalRelay]:
    """Run a relay with a fresh secret under ``workdir`` for the duration of the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret_file = workdir / "relay.secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    secret_file.chmod(0o600)  # the relay refuses a secret others can read
    os.chmod(secret_file, 0o600)
    token = issue_token(secret_file.read_bytes().strip(), [store], 86400, "todo_sync")
    with relay_process(
        workdir / "relay-data",
        secret_file=secret_file,
        ready_timeout=READY_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
    ) as relay:
        yield LocalRelay(relay.url, store, token, relay.lines)
