"""The single-file relay (``server/build_zipapp.py`` -> ``crsync-relay.pyz``) runs on its own.

The archive is built from the packages installed in this environment (no network) and run with
``python -I -S``: no site-packages, no PYTHONPATH, no current directory on ``sys.path``, so every
module the relay needs must come from the archive. A Peer from the source tree then syncs a row
between two databases through it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import trio
from crsync_relay.process import RelayLauncher
from relay_harness import build, running, sync_one_row

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "server" / "build_zipapp.py"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CRSYNC_RELAY_", "PYTHON"))}


def pyz_relay(relay_pyz: Path, tmp_path: Path) -> RelayLauncher:
    """The single-file relay (``--dev``), isolated from this environment (not started)."""
    return RelayLauncher(
        tmp_path / "relay-data",
        command=[sys.executable, "-I", "-S", str(relay_pyz)],
        cwd=tmp_path,
        env=_clean_env(),
        ready_timeout=READY_TIMEOUT,
        stop_timeout=STOP_TIMEOUT,
    )


@pytest.fixture(scope="module")
def relay_pyz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(BUILD, tmp_path_factory.mktemp("dist") / "crsync-relay.pyz", timeout=300)


def test_isolated_mode_cannot_see_the_environment_packages(tmp_path: Path) -> None:
    # What makes the other tests meaningful: `python -I -S` alone cannot import the relay.
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", "import crsync_relay.cli"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "ModuleNotFoundError" in proc.stderr


def test_pyz_holds_pure_python_relay_without_watchfiles(relay_pyz: Path) -> None:
    with zipfile.ZipFile(relay_pyz) as zf:
        names = zf.namelist()
    assert "__main__.py" in names
    assert "crsync_relay/cli.py" in names and "crsync/protocol.py" in names
    assert "msgpack/fallback.py" in names and "trio/__init__.py" in names
    assert not [n for n in names if n.endswith((".so", ".pyd", ".dylib", ".pyc"))]
    assert not [n for n in names if n.split("/")[0] in ("watchfiles", "anyio")]

    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import crsync_relay.cli, crsync_relay.server, msgpack;"
        "print(msgpack.Packer.__module__, 'watchfiles' in sys.modules,"
        " crsync_relay.cli.__file__.startswith(sys.argv[1]))"
    )
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", probe, str(relay_pyz)],
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["msgpack.fallback", "False", "True"]


@pytest.mark.e2e
async def test_pyz_relay_syncs_a_row_between_two_databases(relay_pyz: Path, tmp_path: Path) -> None:
    with running(pyz_relay(relay_pyz, tmp_path)) as relay:
        with trio.fail_after(30):
            await sync_one_row(relay.url, tmp_path, "shipped as one file")
    assert (relay.data_dir / "notes.store.sqlite3").is_file()
