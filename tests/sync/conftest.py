"""Fixtures for the sync-layer tests: a real ``crsync-relay`` process and helpers around it.

The relay runs as a subprocess (``python -m crsync_relay.cli serve``). It is ready when its
``relay.listening ... port=N`` log line appears on stderr; a reader thread collects every line
so tests can also assert on the relay's log (e.g. how many connections it refused).
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
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crsync_relay.auth import issue_token

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"relay\.listening .*\bport=(\d+)")


class RelayProcess:
    """One relay subprocess on a data directory; restartable on the same port."""

    def __init__(
        self,
        data_dir: Path,
        secret_file: Path | None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.secret_file = secret_file
        self.secret = secret_file.read_bytes().strip() if secret_file else None
        self.extra_args = extra_args
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)  # notified for each line read
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the relay and return once it listens (port recorded in ``self.port``)."""
        assert self.proc is None or self.proc.poll() is not None, "relay already running"
        args = [
            sys.executable,
            "-m",
            "crsync_relay.cli",
            "serve",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "debug",
            *self.extra_args,
        ]
        if self.secret_file is None:
            args.append("--dev")
        else:
            args += ["--secret-file", str(self.secret_file)]
        env = dict(os.environ)
        for k in list(env):
            if k.startswith("CRSYNC_RELAY_"):
                del env[k]
        self._queue = queue.Queue()
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(
            target=self._read_stderr, args=(self.proc, self._queue), daemon=True
        )
        self._reader.start()
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise AssertionError(f"relay not listening after {READY_TIMEOUT}s:\n{self.log}")
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"relay exited before listening:\n{self.log}")
            m = _LISTENING.search(line)
            if m:
                self.port = int(m.group(1))
                return

    def _read_stderr(self, proc: subprocess.Popen[str], q: queue.Queue[str | None]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._grew:
                self.lines.append(line.rstrip("\n"))
                self._grew.notify_all()
            q.put(line)
        q.put(None)

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; returns the exit code."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)
            raise AssertionError(
                f"relay ignored SIGTERM for {STOP_TIMEOUT}s:\n{self.log}"
            ) from None
        finally:
            self._join_reader()

    def kill(self) -> None:
        """SIGKILL (no chance to clean up), then reap."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=STOP_TIMEOUT)
        self._join_reader()

    def restart(self, *, hard: bool = True) -> None:
        """Kill (SIGKILL if ``hard``, else SIGTERM) and start again on the same data dir/port."""
        if hard:
            self.kill()
        else:
            self.stop()
        self.start()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=STOP_TIMEOUT)

    # ------------------------------------------------------------------ helpers

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        """Log lines matching a regular expression *read so far*.

        The relay writes a line before (or after) the network effect a test observes, and a
        reader thread collects them: right after a peer saw a refusal, its log line may not be
        read yet. To assert on a line caused by something the test just saw, use
        :meth:`wait_for`.
        """
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> int:
        """Wait until at least ``count`` log lines match ``pattern`` (woken by the reader
        thread for each new line); return how many match. Fails after ``timeout`` seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._grew:
            while True:
                n = sum(1 for line in self.lines if rx.search(line))
                if n >= count:
                    return n
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    text = "\n".join(self.lines)
                    raise AssertionError(
                        f"relay log: {count} line(s) matching {pattern!r} not seen after "
                        f"{timeout}s (found {n}):\n{text}"
                    )
                self._grew.wait(remaining)

    def token(self, *stores: str, ttl: int = 3600, now: float | None = None) -> str:
        """A token signed with this relay's secret."""
        assert self.secret is not None, "a --dev relay takes no tokens"
        return issue_token(self.secret, list(stores), ttl, subject="test", now=now)

    def store_path(self, store: str) -> Path:
        return self.data_dir / f"{store}.store.sqlite3"


RelayFactory = Callable[..., RelayProcess]


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``crsync-relay ARGS`` as a real process; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "crsync_relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """``relay_factory(*extra_args, dev=False, name="relay")`` starts a relay process."""
    started: list[RelayProcess] = []

    def make(*extra_args: str, dev: bool = False, name: str = "relay") -> RelayProcess:
        secret_file = None
        if not dev:
            secret_file = tmp_path / f"{name}.secret"
            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)  # the relay refuses a secret others can read
        r = RelayProcess(tmp_path / f"{name}-data", secret_file, tuple(extra_args))
        started.append(r)
        r.start()
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A relay that requires tokens (use ``relay.token(store)``)."""
    return relay_factory()
