"""Run ``crsync-relay serve`` as a child process on loopback (examples, benchmarks, tests).

Readiness is a state: :meth:`RelayLauncher.start` returns once the relay logged
``relay.listening ... port=N``, never after a fixed delay. A reader thread collects every log
line, so callers can also wait for, and count, lines of the relay's log.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

_LISTENING = re.compile(r"relay\.listening .*\bport=(\d+)")


class RelayLauncher:
    """One relay process on a data directory: started, stopped and started again on the same
    port, its log collected line by line."""

    def __init__(
        self,
        data_dir: Path | None,
        *,
        secret_file: Path | None = None,
        args: Sequence[str] = (),
        command: Sequence[str] | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        database: str | None = None,
    ) -> None:
        """
        Args:
            data_dir: the relay's data directory; None: ``args`` configure the relay alone
                (e.g. ``--config FILE``), the launcher adds no option of its own (no
                ``--host``, ``--port``, ``--secret-file`` or ``--dev``).
            secret_file: token secret; without one the relay runs with ``--dev``.
            args: further ``serve`` options.
            command: what runs ``crsync-relay`` (default: this Python, ``-m crsync_relay.cli``;
                e.g. ``python -I -S crsync-relay.pyz`` for the single-file relay).
            cwd: the relay's working directory (default: this process's).
            env: the relay's environment (default: this process's without ``CRSYNC_RELAY_*``
                variables, so that only the given options configure it).
            ready_timeout: how long to wait for the listening line.
            stop_timeout: how long SIGTERM may take before the process is killed.
            database: a ``postgresql://`` URL: the relay serves its stores from PostgreSQL
                (``--database``) instead of ``data_dir`` (then None); the launcher adds its
                host, port and secret options as with a data directory.
        """
        self.data_dir = data_dir
        self.database = database
        self.secret_file = secret_file
        self.args = tuple(args)
        self.command = (
            tuple(command) if command is not None else (sys.executable, "-m", "crsync_relay.cli")
        )
        self.cwd = cwd
        self.env = (
            dict(env)
            if env is not None
            else {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
        )
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        """Every log line read so far (of every run)."""
        self._lock = threading.Lock()
        self._grew = threading.Condition(self._lock)  # notified for each line read
        self._reader: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the relay and return once it listens (on ``self.port``: the previous run's
        port after a restart, else a free one).

        Raises:
            RuntimeError: the relay exited or did not listen in time (its log is in the message).
        """
        assert self.proc is None or self.proc.poll() is not None, "relay already running"
        cmd = [*self.command, "serve", *self.args]
        if self.data_dir is not None or self.database is not None:
            if self.database is not None:
                cmd += ["--database", self.database, "--host", "127.0.0.1"]
            else:
                cmd += ["--data-dir", str(self.data_dir), "--host", "127.0.0.1"]
            cmd += ["--port", str(self.port)]
            cmd += ["--secret-file", str(self.secret_file)] if self.secret_file else ["--dev"]
        ports: queue.Queue[int | None] = queue.Queue()
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=self.cwd,
            env=self.env,
        )
        self._reader = threading.Thread(
            target=self._read_log, args=(self.proc, ports), name="relay-log", daemon=True
        )
        self._reader.start()
        try:
            port = ports.get(timeout=self.ready_timeout)
        except queue.Empty:
            self.kill()
            raise RuntimeError(
                f"the relay did not listen within {self.ready_timeout:.0f} s:\n{self.log}"
            ) from None
        if port is None:
            raise RuntimeError(f"the relay exited before listening:\n{self.log}")
        self.port = port

    def _read_log(self, proc: subprocess.Popen[str], ports: queue.Queue[int | None]) -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            with self._grew:
                self.lines.append(line.rstrip("\n"))
                self._grew.notify_all()
            m = _LISTENING.search(line)
            if m:
                ports.put(int(m.group(1)))
        ports.put(None)  # the relay exited

    def stop(self) -> int | None:
        """SIGTERM, wait (bounded), SIGKILL if needed; the exit status (None if never started).

        Raises:
            RuntimeError: the relay ignored SIGTERM (it was killed).
        """
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=self.stop_timeout)
            raise RuntimeError(
                f"the relay ignored SIGTERM for {self.stop_timeout:.0f} s:\n{self.log}"
            ) from None
        finally:
            self._join_reader()

    def kill(self) -> None:
        """SIGKILL (no chance to clean up), then reap."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait(timeout=self.stop_timeout)
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=self.stop_timeout)

    # ------------------------------------------------------------------ state and log

    @property
    def url(self) -> str:
        """The relay's ``ws://`` URL."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The relay's process id."""
        assert self.proc is not None, "the relay was never started"
        return self.proc.pid

    @property
    def log(self) -> str:
        """The log read so far, one line per line."""
        with self._lock:
            return "\n".join(self.lines)

    def count(self, pattern: str) -> int:
        """Log lines matching a regular expression *read so far*.

        The relay writes a line before (or after) the network effect a caller observes, and a
        reader thread collects them: right after a peer saw a refusal, its log line may not be
        read yet. To count a line caused by something just seen, use :meth:`wait_for`.
        """
        rx = re.compile(pattern)
        with self._lock:
            return sum(1 for line in self.lines if rx.search(line))

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 10.0) -> int:
        """Wait until at least ``count`` log lines match ``pattern`` (woken by the reader
        thread for each new line); return how many match.

        Raises:
            TimeoutError: fewer lines matched after ``timeout`` seconds (the log is in the
                message).
        """
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
                    raise TimeoutError(
                        f"relay log: {count} line(s) matching {pattern!r} not seen after "
                        f"{timeout}s (found {n}):\n{text}"
                    )
                self._grew.wait(remaining)


@contextmanager
def relay_process(
    data_dir: Path | None,
    *,
    secret_file: Path | None = None,
    args: Sequence[str] = (),
    ready_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[RelayLauncher]:
    """Start a relay on 127.0.0.1 (a free port), yield it once it listens, stop it after
    (see :class:`RelayLauncher` for the arguments; ``data_dir`` None: ``args`` configure it).

    Raises:
        RuntimeError: the relay exited or did not listen in time (its log is in the message).
    """
    relay = RelayLauncher(
        data_dir,
        secret_file=secret_file,
        args=args,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
    )
    relay.start()
    try:
        yield relay
    finally:
        try:
            relay.stop()
        except RuntimeError:
            pass  # killed after ignoring SIGTERM, as before
