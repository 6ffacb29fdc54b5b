"""Run ``crsync-relay serve`` as a child process on loopback (examples, benchmarks, tests).

Readiness is a state: the context manager returns once the relay logged
``relay.listening ... port=N``, never after a fixed delay.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs

_LISTENING = re.compile(r"relay\.listening .*\bport=(\d+)")


@attrs.define
class RelayChild:
    """A running relay process."""

    proc: subprocess.Popen[str]
    port: int
    log: list[str]

    @property
    def url(self) -> str:
        """The relay's ``ws://`` URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The relay's process id."""
        return self.proc.pid


@contextmanager
def relay_process(
    data_dir: Path,
    *,
    secret_file: Path | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[RelayChild]:
    """Start a relay on 127.0.0.1 (a free port), yield it once it listens, stop it after.

    Args:
        data_dir: the relay's data directory.
        secret_file: token secret; without one the relay runs with ``--dev``.
        args: further ``serve`` options.
        ready_timeout: how long to wait for the listening line.
        stop_timeout: how long SIGTERM may take before the process is killed.

    Raises:
        RuntimeError: the relay exited or did not listen in time (its log is in the message).
    """
    cmd = [
        sys.executable,
        "-m",
        "crsync_relay.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]
    cmd += ["--secret-file", str(secret_file)] if secret_file is not None else ["--dev"]
    cmd += list(args)
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
            port = ports.get(timeout=ready_timeout)
        except queue.Empty:
            raise RuntimeError(
                f"the relay did not listen within {ready_timeout:.0f} s:\n" + "\n".join(lines)
            ) from None
        if port is None:
            raise RuntimeError("the relay exited before listening:\n" + "\n".join(lines))
        yield RelayChild(proc, port, lines)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(stop_timeout)
        reader.join(stop_timeout)
