"""Fixtures for the sync-layer tests: a real ``crsync-relay`` process and helpers around it.

The relay runs as a subprocess (``python -m crsync_relay.cli serve``), launched by
:class:`crsync_relay.process.RelayLauncher` (the launcher of the examples and benchmarks too).
It is ready when its ``relay.listening ... port=N`` log line appears on stderr; a reader thread
collects every line so tests can also assert on the relay's log (e.g. how many connections it
refused).
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crsync_relay.auth import issue_token
from crsync_relay.datadir import DataDir
from crsync_relay.process import RelayLauncher

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class RelayProcess(RelayLauncher):
    """One relay subprocess on a data directory (``--log-level debug``); restartable on the
    same port. Failures to start or stop, and log lines not seen in time, fail the test."""

    def __init__(
        self,
        data_dir: Path,
        secret_file: Path | None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(
            data_dir,
            secret_file=secret_file,
            args=("--log-level", "debug", *extra_args),
            ready_timeout=READY_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        )
        self.secret = secret_file.read_bytes().strip() if secret_file else None
        self.extra_args = extra_args

    def start(self) -> None:
        """Start the relay and return once it listens (port recorded in ``self.port``)."""
        try:
            super().start()
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; returns the exit code."""
        try:
            return super().stop()
        except RuntimeError as exc:
            raise AssertionError(str(exc)) from None

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> int:
        """Wait until at least ``count`` log lines match ``pattern``; return how many match.
        Fails the test after ``timeout`` seconds (see :meth:`RelayLauncher.count` on why to
        wait rather than count)."""
        try:
            return super().wait_for(pattern, count, timeout)
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None

    def token(self, *stores: str, ttl: int = 3600, now: float | None = None) -> str:
        """A token signed with this relay's secret."""
        assert self.secret is not None, "a --dev relay takes no tokens"
        return issue_token(self.secret, list(stores), ttl, subject="test", now=now)

    def store_path(self, store: str) -> Path:
        return DataDir(self.data_dir).store_path(store)


RelayFactory = Callable[..., RelayProcess]


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``crsync-relay ARGS`` as a real process; its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "crsync_relay.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def relay_processes(tmp_path: Path, *, strict_stop: bool = True) -> Iterator[RelayFactory]:
    """``make(*extra_args, dev=False, name="relay", data_dir=None)`` starts relay processes,
    stopped when the block ends. ``strict_stop``: a relay that ignores SIGTERM fails the test
    (else it is killed quietly, for tests that leave a relay in a bad state on purpose)."""
    started: list[RelayProcess] = []

    def make(
        *extra_args: str, dev: bool = False, name: str = "relay", data_dir: Path | None = None
    ) -> RelayProcess:
        secret_file = None
        if not dev:
            secret_file = tmp_path / f"{name}.secret"
            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)  # the relay refuses a secret others can read
        r = RelayProcess(data_dir or tmp_path / f"{name}-data", secret_file, tuple(extra_args))
        started.append(r)
        r.start()
        return r

    try:
        yield make
    finally:
        stuck: list[AssertionError] = []
        for r in started:
            try:
                r.stop()
            except AssertionError as exc:
                r.kill()
                stuck.append(exc)
        if stuck and strict_stop:
            raise stuck[0]


@pytest.fixture
def relay_factory(tmp_path: Path) -> Iterator[RelayFactory]:
    """``relay_factory(*extra_args, dev=False, name="relay", data_dir=None)`` starts a relay
    process (see :func:`relay_processes`)."""
    with relay_processes(tmp_path) as make:
        yield make


@pytest.fixture
def relay(relay_factory: RelayFactory) -> RelayProcess:
    """A relay that requires tokens (use ``relay.token(store)``)."""
    return relay_factory()
