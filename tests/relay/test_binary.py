"""The self-contained relay executable (``server/build_binary.py``) runs on a host without Python.

The binary is built once per module with PyInstaller. Where this test runs as root with
``unshare`` (CI does), the relay runs in a private mount namespace in which every Python
installation of this machine is hidden under an empty tmpfs: nothing but the binary can
provide the interpreter, the standard library or the relay's dependencies. Elsewhere it still
runs with an empty environment (no ``PATH`` to a Python, no ``PYTHON*`` variables).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from pathlib import Path

import pytest
import trio
from crsync_relay.process import RelayLauncher

ROOT = Path(__file__).resolve().parents[2]
# tests/relay is not a package: the private PostgreSQL harness is imported from tests/.
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

from relay_harness import build, running, sync_one_row  # noqa: E402
from store.pg_fixtures import pg_server  # noqa: E402, F401  (the fixture)
from store.pg_server import PrivatePostgres  # noqa: E402

BUILD = ROOT / "server" / "build_binary.py"

pytestmark = pytest.mark.slow

pytest.importorskip(
    "PyInstaller", reason="PyInstaller is in the test extra: pip install -e '.[test]'"
)


def _python_dirs() -> list[str]:
    """Every directory holding a Python installation on this machine (to hide)."""
    dirs = {sys.base_prefix, sys.prefix, sysconfig.get_paths()["stdlib"]}
    for pattern in ("/usr/lib/python3*", "/usr/local/lib/python3*", "/opt/python*"):
        dirs.update(glob.glob(pattern))
    # Never hide what holds the test's own files or the system's shell.
    keep = ("/", "/usr", "/usr/local", "/tmp", "/root", "/bin", "/usr/bin")
    found = sorted(os.path.realpath(d) for d in dirs if os.path.isdir(d) and d not in keep)
    # A hidden directory hides what is below it: mount over the topmost ones only.
    return [d for d in found if not any(d.startswith(p + os.sep) for p in found if p != d)]


def _can_hide_python() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
    )
    return probe.returncode == 0


def _command(binary: Path) -> list[str]:
    """What starts the relay: the binary, with every Python hidden where possible."""
    if not _can_hide_python():
        return [str(binary)]
    mounts = " && ".join(f"mount -t tmpfs none '{d}'" for d in _python_dirs())
    script = f'{mounts} && exec "$0" "$@"'
    return ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", script, str(binary)]


@pytest.fixture(scope="module")
def relay_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = build(BUILD, tmp_path_factory.mktemp("dist") / "crsync-relay", timeout=600)
    assert os.access(out, os.X_OK)
    return out


def test_hidden_python_really_is_hidden(tmp_path: Path) -> None:
    # What makes the next test meaningful: inside the namespace, this machine's Python is gone.
    if not _can_hide_python():
        pytest.skip("needs root and unshare to hide this machine's Python")
    proc = subprocess.run(
        [*_command(Path(sys.executable)), "-c", "import encodings"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr


def test_binary_answers_help_with_an_empty_environment(relay_binary: Path) -> None:
    proc = subprocess.run(
        [*_command(relay_binary), "--help"],
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    for command in ("serve", "token", "stores", "backup"):
        assert command in proc.stdout


def test_binary_refuses_bad_usage_with_the_usage_status(relay_binary: Path) -> None:
    proc = subprocess.run(
        [str(relay_binary), "serve", "--port", "not-a-port"],
        env={"PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not-a-port" in proc.stderr


@pytest.mark.e2e
async def test_binary_relay_syncs_a_row_between_two_databases(
    relay_binary: Path, tmp_path: Path
) -> None:
    relay = RelayLauncher(
        tmp_path / "relay-data",
        command=_command(relay_binary),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        ready_timeout=120,
    )
    with running(relay):
        with trio.fail_after(60):
            await sync_one_row(relay.url, tmp_path, "no Python on this host")
    assert (tmp_path / "relay-data" / "notes.store.sqlite3").is_file()


@pytest.mark.e2e
async def test_binary_relay_serves_postgres_and_syncs_a_row(
    relay_binary: Path,
    pg_server: PrivatePostgres,  # noqa: F811  (the fixture imported above)
    tmp_path: Path,
) -> None:
    # The PostgreSQL backend is bundled too: psycopg, its pool and its C implementation
    # (PSYCOPG_IMPL=binary makes psycopg fail rather than fall back to another one).
    name = f"binary_{uuid.uuid4().hex[:10]}"
    pg_server.create_database(name)
    relay = RelayLauncher(
        None,
        database=pg_server.url(name),
        command=_command(relay_binary),
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PSYCOPG_IMPL": "binary"},
        ready_timeout=120,
    )
    with running(relay):
        with trio.fail_after(60):
            await sync_one_row(relay.url, tmp_path, "stored in PostgreSQL")
