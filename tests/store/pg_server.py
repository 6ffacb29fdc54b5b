"""A private PostgreSQL server for tests: initdb into a temporary directory, ``postgres`` on a
free loopback port, run as a non-root user (PostgreSQL refuses root), stopped at the end.

Binaries come from ``PATH`` or Debian's ``/usr/lib/postgresql/<version>/bin``. As root, the
server runs as the system user ``crsync-pg`` (created if missing; ``nobody`` if it cannot
be). Waits are bounded: readiness is a connection attempt in a loop with a deadline, and a
server that exits early fails at once with its log.

Reusable beyond the store suite (cluster tests): ``PrivatePostgres.stop()`` and ``start()``
restart the same server on the same port and data (a PostgreSQL restart).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PG_USER = "crsync-pg"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0


class PostgresUnavailable(Exception):
    """The PostgreSQL server binaries are not on this machine."""


def find_bindir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (``CRSYNC_PG_BINDIR`` if set)."""
    forced = os.environ.get("CRSYNC_PG_BINDIR")
    if forced:
        if (Path(forced) / "initdb").exists() and (Path(forced) / "postgres").exists():
            return Path(forced)
        raise PostgresUnavailable(f"CRSYNC_PG_BINDIR={forced} holds no initdb and postgres")
    found = shutil.which("initdb")
    if found:
        bindir = Path(found).resolve().parent
        if (bindir / "postgres").exists():
            return bindir
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    for initdb in reversed(candidates):
        bindir = Path(initdb).parent
        if (bindir / "postgres").exists():
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, postgres) not found on PATH nor in "
        "/usr/lib/postgresql/*/bin; install Debian's postgresql package"
    )


def _run_as() -> tuple[list[str], int | None, int | None]:
    """The command prefix that drops root, and the uid/gid to own the files (None: as is)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        pw = pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=False,
            capture_output=True,
            timeout=30,
        )
        try:
            pw = pwd.getpwnam(PG_USER)
        except KeyError:
            pw = pwd.getpwnam("nobody")
    setpriv = shutil.which("setpriv")
    if setpriv:  # execs in place: the child's pid is the server's (signals reach it)
        prefix = [setpriv, f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups"]
        help_text = subprocess.run(
            [setpriv, "--help"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
        if "--pdeathsig" in help_text:  # a test run killed hard leaves no server behind
            prefix.append("--pdeathsig=SIGINT")
    else:
        prefix = [shutil.which("runuser") or "runuser", "-u", pw.pw_name, "--"]
    return prefix, pw.pw_uid, pw.pw_gid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """One throwaway PostgreSQL cluster (``fsync=off``: for tests only)."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.prefix, self.uid, self.gid = _run_as()
        self.base = Path(tempfile.mkdtemp(prefix="crsync-pg-"))
        self.data = self.base / "data"
        self.log_path = self.base / "server.log"
        self.user = "crsync"
        self.password = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        if self.uid is not None:
            os.chown(self.base, self.uid, self.gid or 0)
        pwfile = self.base / "pw"
        pwfile.write_text(self.password + "\n")
        if self.uid is not None:
            os.chown(pwfile, self.uid, self.gid or 0)
        res = subprocess.run(
            [
                *self.prefix,
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        pwfile.unlink()
        if res.returncode != 0:
            raise RuntimeError(
                f"initdb failed ({res.returncode}): {res.stderr.decode(errors='replace')}"
            )

    def conninfo(self, dbname: str = "postgres") -> str:
        """A libpq connection string for the server (TCP on loopback, password)."""
        return (
            f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} "
            f"dbname={dbname} connect_timeout=10"
        )

    def url(self, dbname: str = "postgres") -> str:
        """The same as a ``postgresql://`` URL."""
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start the server (a free port the first time, the same port after) and return once
        it accepts connections.

        From the main thread only: as root the server runs under ``setpriv --pdeathsig``,
        which signals it when the *thread* that started it exits, so a server started from a
        worker thread (``trio.to_thread``, whose idle threads exit) would stop by itself
        seconds later."""
        import threading

        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(
                "start PrivatePostgres from the main thread (the server is signalled when the "
                "thread that started it exits)"
            )
        for attempt in range(3):
            if not self.port or attempt:
                self.port = _free_port()
            log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
            try:
                self.proc = subprocess.Popen(
                    [
                        *self.prefix,
                        str(self.bindir / "postgres"),
                        "-D",
                        str(self.data),
                        "-p",
                        str(self.port),
                        "-k",
                        str(self.base),
                        "-c",
                        "listen_addresses=127.0.0.1",
                        "-c",
                        "fsync=off",
                        "-c",
                        "full_page_writes=off",
                        "-c",
                        "shared_buffers=32MB",
                        "-c",
                        "max_connections=100",
                        "-c",
                        "log_min_messages=warning",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            if self._wait_ready():
                return
            if "could not bind" not in self.log_path.read_text(errors="replace"):
                break
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")

    def _wait_ready(self) -> bool:
        import psycopg

        deadline = time.monotonic() + READY_TIMEOUT
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.conninfo(), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)  # poll interval inside a bounded wait for readiness
        self.stop()
        raise RuntimeError(f"PostgreSQL not ready in {READY_TIMEOUT}s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        """The end of the server's log."""
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self, *, kill: bool = False) -> None:
        """Stop the server (fast shutdown; ``kill``: SIGKILL, as a crash), waiting boundedly."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGINT)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)

    def create_database(self, name: str) -> str:
        """Create a database; returns its conninfo."""
        import psycopg

        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.conninfo(name)

    def cleanup(self) -> None:
        """Stop the server and remove its files."""
        self.stop()
        with contextlib.suppress(OSError):
            shutil.rmtree(self.base)
