"""``crsync sync`` against a real relay: one-shot, refused token, continuous until Ctrl-C."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import RelayProcess
from .helpers import open_db, rows


def _sync(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "crsync", "sync", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_one_shot_sync_exits_zero_once_synced(relay: RelayProcess, tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    b = open_db(tmp_path / "b.db")
    a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'from a')")
    tok = relay.token("cli")
    for path in ("a.db", "b.db"):
        done = _sync(str(tmp_path / path), "--url", relay.url, "--store", "cli", "--token", tok)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("synced: ")
    assert rows(b) == rows(a)


def test_refused_token_is_one_line_and_nonzero(relay: RelayProcess, tmp_path: Path) -> None:
    open_db(tmp_path / "a.db")
    tok = relay.token("other-store")
    done = _sync(str(tmp_path / "a.db"), "--url", relay.url, "--store", "cli", "--token", tok)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "crsync: error: relay refused the token (forbidden): the token does not grant access "
        "to store 'cli'"
    ]


def _watch(db: Path, url: str, store: str, token: str) -> subprocess.Popen[str]:
    """``crsync sync DB --watch`` as a real process (stdout and stderr piped)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "crsync",
            "sync",
            str(db),
            "--url",
            url,
            "--store",
            store,
            "--token",
            token,
            "--watch",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_watch_keeps_syncing_and_ctrl_c_exits_cleanly(relay: RelayProcess, tmp_path: Path) -> None:
    a = open_db(tmp_path / "a.db")
    b = open_db(tmp_path / "b.db")
    tok = relay.token("w")
    proc = _watch(tmp_path / "a.db", relay.url, "w", tok)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # printed once the peer runs
        assert "Ctrl-C to stop" in first
        a.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'live')")
        done = _sync(str(tmp_path / "b.db"), "--url", relay.url, "--store", "w", "--token", tok)
        # b's one-shot sync returns once it has what the relay had; a's watcher pushes the
        # row when it notices the write, so retry the one-shot until it arrives (bounded).
        for _ in range(50):
            if rows(b):
                break
            done = _sync(str(tmp_path / "b.db"), "--url", relay.url, "--store", "w", "--token", tok)
            assert done.returncode == 0, done.stderr
        assert [r[:2] for r in rows(b)] == [("1", "live")]
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_one_shot_sync_says_why_it_is_offline(tmp_path: Path) -> None:
    open_db(tmp_path / "a.db")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    done = _sync(
        str(tmp_path / "a.db"), "--url", f"ws://127.0.0.1:{port}", "--store", "s", "--timeout", "2"
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"offline: relay ws://127.0.0.1:{port} unreachable: ")
    assert "refused" in lines[0].lower() and lines[0].endswith("; retrying")
    assert lines[-1].startswith("crsync: error: not synced after 2s (peer ")
    assert "refused" in lines[-1].lower()
    assert "Traceback" not in done.stderr


def test_a_relay_url_that_cannot_work_is_one_line_at_once(tmp_path: Path) -> None:
    open_db(tmp_path / "a.db")
    done = _sync(str(tmp_path / "a.db"), "--url", "ws://127.0.0.1:notaport", "--store", "s")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "crsync: error: invalid relay URL 'ws://127.0.0.1:notaport': Port could not be cast to "
        "integer value as 'notaport'"
    ]


@pytest.mark.slow
def test_watch_survives_the_app_holding_a_write_lock_past_the_busy_timeout(
    relay: RelayProcess, tmp_path: Path
) -> None:
    """The app holds a write transaction longer than the peer's busy timeout (10 s) while
    another device pushes: the merge fails with "database is locked"; `--watch` says so and
    keeps going (it used to exit), and merges once the app commits."""
    a = open_db(tmp_path / "a.db")
    open_db(tmp_path / "b.db")
    tok = relay.token("w")
    proc = _watch(tmp_path / "a.db", relay.url, "w", tok)
    try:
        assert proc.stderr is not None
        assert "Ctrl-C to stop" in proc.stderr.readline()
        b = open_db(tmp_path / "b.db")
        b.conn.execute("INSERT INTO todos (id, title) VALUES ('1', 'from b')")
        a.conn.execute("BEGIN IMMEDIATE")
        a.conn.execute("INSERT INTO todos (id, title) VALUES ('2', 'from a, held')")
        done = _sync(str(tmp_path / "b.db"), "--url", relay.url, "--store", "w", "--token", tok)
        assert done.returncode == 0, done.stderr
        line = proc.stderr.readline()  # after the busy timeout
        assert line.startswith("offline: local database unavailable (SQLITE_BUSY"), line
        assert proc.poll() is None, "--watch exited"
        a.conn.execute("COMMIT")
        for _ in range(100):  # bounded: the watcher retries with backoff (at most 30 s apart)
            if [r[:2] for r in rows(a)] == [("1", "from b"), ("2", "from a, held")]:
                break
            time.sleep(0.3)
        assert [r[:2] for r in rows(a)] == [("1", "from b"), ("2", "from a, held")]
    finally:
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
