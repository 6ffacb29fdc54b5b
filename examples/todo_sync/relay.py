"""A throw-away ``crsync-relay`` on loopback for the demo and the tests.

It generates a secret, starts ``python -m crsync_relay.cli serve`` on a free port, waits for
its ``relay.listening ... port=N`` log line and mints a token for one store.
"""

from __future__ import annotations

import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crsync_relay.auth import issue_token

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
    os.chmod(secret_file, 0o600)
    token = issue_token(secret_file.read_bytes().strip(), [store], 86400, "todo_sync")
    cmd = [
        sys.executable,
        "-m",
        "crsync_relay.cli",
        "serve",
        "--data-dir",
        str(workdir / "relay-data"),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--secret-file",
        str(secret_file),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: list[str] = []
    ports: queue.Queue[int | None] = queue.Queue()

    def read_log() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m:
                ports.put(int(m.group(1)))
        ports.put(None)  # the relay exited

    reader = threading.Thread(target=read_log, name="relay-log", daemon=True)
    reader.start()
    try:
        try:
            port = ports.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            raise RuntimeError(f"the relay did not listen within {READY_TIMEOUT:.0f} s") from None
        if port is None:
            raise RuntimeError("the relay exited before listening:\n" + "\n".join(lines))
        yield LocalRelay(f"ws://127.0.0.1:{port}", store, token, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        reader.join(STOP_TIMEOUT)
