"""Build ``dist/crsync-relay``: a self-contained relay executable for hosts without Python.

Usage (from the repository root, with the project's virtual environment and PyInstaller
and psycopg installed, e.g. ``pip install -e '.[binary,postgres]'``)::

    .venv/bin/python server/build_binary.py                  # -> dist/crsync-relay
    .venv/bin/python server/build_binary.py -o /tmp/crsync-relay

Run the result on any Linux host of the same architecture with a glibc at least as new as the
build host's (build on the oldest distribution you deploy to, e.g. in the Dockerfile's build
stage)::

    ./crsync-relay serve --data-dir /var/lib/crsync --secret-file /etc/crsync/secret
    ./crsync-relay serve --database postgresql://... --secret-file /etc/crsync/secret

Why PyInstaller: it is the best-kept freezer for a pure-Python program (releases every few
months, Linux/macOS/Windows, the interpreter and the compiled extensions bundled in one file
that unpacks itself at start). Nuitka compiles to C and needs a C toolchain at build time for a
speed-up the relay does not need (it spends its time in SQLite and the network); PyOxidizer and
shiv are no longer maintained or still need a Python on the host.

The relay's modules are found by following imports from ``crsync_relay.cli`` (plus every
``crsync_relay`` submodule, some of which the CLI imports lazily, and the PostgreSQL client:
psycopg, psycopg_pool and psycopg_binary, named explicitly since ``pg_store`` imports them
only for ``--database``); the device side of crsync
(``crsync.peer``, ``crsync.live`` and their file watcher ``watchfiles``) is left out. The result
is checked before it is kept: it must answer ``--version``-like ``--help`` with an empty
environment (no ``PATH`` to a Python, no ``PYTHON*`` variables).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

ENTRY = '''\
"""Entry point of the frozen crsync-relay."""
from crsync_relay.cli import main

main(prog_name="crsync-relay")
'''

# The PostgreSQL client (``serve --database``): psycopg, its pool and its C implementation.
POSTGRES = ("psycopg", "psycopg_pool", "psycopg_binary")

# Only the device side imports these; the relay must not carry them.
# Nor the framework integrations (crsync.contrib): a collected submodule (psycopg's) must not
# let PyInstaller's hooks pull in Django or SQLAlchemy installed beside it.
EXCLUDED = (
    "watchfiles",
    "crsync.peer",
    "crsync.live",
    "crsync.contrib",
    "django",
    "sqlalchemy",
    "alembic",
    "tkinter",
    "PySide6",
)


def build(output: Path) -> Path:
    """Freeze the relay into ``output`` and return it.

    Raises:
        SystemExit: PyInstaller is missing, the build failed, or the result does not run.
    """
    try:
        import PyInstaller.__main__ as pyinstaller
    except ImportError:
        raise SystemExit(
            "build_binary.py needs PyInstaller: pip install -e '.[binary]' (or pyinstaller>=6)"
        ) from None
    missing = [name for name in POSTGRES if importlib.util.find_spec(name) is None]
    if missing:
        raise SystemExit(
            f"build_binary.py bundles the PostgreSQL backend but {', '.join(missing)} is not "
            "installed: pip install -e '.[binary,postgres]'"
        )
    output = output.resolve()
    with tempfile.TemporaryDirectory(prefix="crsync-relay-build-") as tmp:
        work = Path(tmp)
        entry = work / "crsync_relay_main.py"
        entry.write_text(ENTRY)
        args = [
            str(entry),
            "--onefile",
            "--name",
            output.name,
            "--noconfirm",
            "--log-level",
            "WARN",
            "--distpath",
            str(work / "dist"),
            "--workpath",
            str(work / "build"),
            "--specpath",
            str(work),
            # The source tree first: an editable install is invisible to PyInstaller's analysis.
            "--paths",
            str(ROOT),
            "--paths",
            str(ROOT / "server"),
            "--collect-submodules",
            "crsync_relay",
        ]
        # The PostgreSQL backend: pg_store imports psycopg lazily (only for ``--database``), so
        # the analysis that follows imports from the CLI would miss it. psycopg loads its
        # implementation by name at run time (``psycopg_binary``: the C one, with its own libpq
        # and OpenSSL in ``psycopg_binary.libs``): every submodule and shared library is named.
        for name in POSTGRES:
            args += ["--hidden-import", name, "--collect-submodules", name]
        args += ["--collect-binaries", "psycopg_binary"]
        for name in EXCLUDED:
            args += ["--exclude-module", name]
        pyinstaller.run(args)
        built = work / "dist" / output.name
        if not built.is_file():
            raise SystemExit(f"PyInstaller produced no {built}")
        check(built)
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, output)
    return output


def check(binary: Path) -> None:
    """Run ``binary --help`` with an empty environment; exit with its output if it fails."""
    proc = subprocess.run(
        [str(binary), "--help"],
        env={"PATH": "/nonexistent"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0 or "serve" not in proc.stdout:
        raise SystemExit(
            f"the built relay does not run (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "dist" / "crsync-relay", help="where to write"
    )
    ns = parser.parse_args(argv)
    print(build(ns.output))


if __name__ == "__main__":
    sys.exit(main())
