"""Build ``dist/crsync-relay.pyz``: the relay and its pure-Python dependencies in one file.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python server/build_zipapp.py                  # -> dist/crsync-relay.pyz
    .venv/bin/python server/build_zipapp.py -o /tmp/relay.pyz
    .venv/bin/python server/build_zipapp.py --from-pypi      # fresh wheels instead of the venv

Run the result with any Python >= 3.11, nothing else installed::

    python3 crsync-relay.pyz serve --data-dir /var/lib/crsync --secret-file /etc/crsync/secret

How it is built (stdlib ``zipapp``):

* ``crsync`` and ``crsync_relay`` are copied from this source tree;
* the relay's dependencies (crsync's runtime dependencies minus ``watchfiles``, which only
  ``crsync.peer`` uses, and their own dependencies, environment markers evaluated for this
  interpreter) are copied from the installed distributions, file by file from their
  ``importlib.metadata`` file lists, or with ``--from-pypi`` installed by
  ``pip install --target STAGE --no-compile --only-binary=:all: ...``;
* compiled extension modules are dropped: a zip archive cannot load them, and the relay needs
  none (msgpack falls back to ``msgpack.fallback``, websockets to its pure ``apply_mask``).

The result is checked before it is kept: run in isolated mode (``python -I -S``, so no
site-packages and no source tree can fill in a gap), the relay's modules must all load from the
archive, ``watchfiles`` must stay unimported and msgpack must be the pure-Python one.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipapp
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"crsync": ROOT / "crsync", "crsync_relay": ROOT / "server" / "crsync_relay"}

# crsync's runtime dependencies that the relay imports (pyproject.toml minus watchfiles).
RELAY_REQUIREMENTS = (
    "attrs",
    "trio",
    "websockets",
    "msgpack",
    "click",
    "pyjwt",
    "prometheus-client",
    "filelock",
)
# Never shipped: only crsync.peer (the device side) imports them.
EXCLUDED = {"watchfiles", "anyio"}
COMPILED_SUFFIXES = (".so", ".pyd", ".dylib", ".dll")
DEFAULT_INTERPRETER = "/usr/bin/env python3"

MAIN = '''\
"""Entry point of crsync-relay.pyz."""
import sys

if sys.version_info < (3, 11):
    sys.exit("crsync-relay needs Python 3.11 or newer (this is %d.%d)" % sys.version_info[:2])

from crsync_relay.cli import main

main(prog_name="crsync-relay")
'''

# Run inside ``python -I -S`` with the archive first on sys.path; prints a JSON report.
CHECK = """\
import json, sys
sys.path.insert(0, sys.argv[1])
import crsync, crsync_relay.cli, crsync_relay.server, crsync_relay.session, crsync_relay.store
import msgpack
relay_imported_watchfiles = "watchfiles" in sys.modules
try:
    import watchfiles  # noqa: F401
    importable = True
except ImportError:
    importable = False
outside = sorted(
    name for name, mod in list(sys.modules.items())
    if name.split(".")[0] in {d.split(".")[0] for d in sys.argv[2:]}
    and not (getattr(mod, "__file__", None) or "").startswith(sys.argv[1])
)
print(json.dumps({
    "outside": outside,
    "watchfiles_imported_by_relay": relay_imported_watchfiles,
    "watchfiles_importable": importable,
    "msgpack": msgpack.Packer.__module__,
}))
"""


class BuildError(Exception):
    """The artifact could not be built or failed its check."""


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _requirement_parser() -> Any:
    try:
        module = importlib.import_module("packaging.requirements")
    except ImportError:  # pip vendors packaging; every venv has pip
        module = importlib.import_module("pip._vendor.packaging.requirements")
    return module.Requirement


def dependency_closure(roots: tuple[str, ...] = RELAY_REQUIREMENTS) -> list[md.Distribution]:
    """The installed distributions the relay needs: ``roots`` and everything they require
    (markers evaluated for this interpreter, extras ignored), minus :data:`EXCLUDED`."""
    requirement = _requirement_parser()
    seen: dict[str, md.Distribution] = {}
    todo = list(roots)
    while todo:
        name = _normalize(todo.pop())
        if name in seen:
            continue
        if name in EXCLUDED:
            raise BuildError(f"{name} must not be part of the relay artifact")
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise BuildError(
                f"{name} is not installed in {sys.prefix}; install the project first "
                "(pip install -e .) or use --from-pypi"
            ) from None
        seen[name] = dist
        for spec in dist.requires or []:
            req = requirement(spec)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return [seen[k] for k in sorted(seen)]


def _wanted(rel: Path) -> bool:
    parts = rel.parts
    if not parts or parts[0] in ("..", "bin") or "__pycache__" in parts:
        return False
    if any(part in ("tests", "_tests") for part in parts[1:-1]):
        return False  # test suites shipped inside some packages (trio._tests)
    if rel.suffix in (".pyc", ".pyo") or rel.name.endswith(COMPILED_SUFFIXES):
        return False
    # RECORD lists the dropped extension modules and hashes that no longer hold.
    return not (parts[0].endswith(".dist-info") and rel.name in ("RECORD", "INSTALLER"))


def copy_installed(dists: list[md.Distribution], stage: Path) -> list[str]:
    """Copy the pure-Python files of ``dists`` into ``stage``; returns ``name==version`` lines."""
    shipped = []
    for dist in dists:
        base = Path(str(dist.locate_file(""))).resolve()
        files = dist.files
        if files is None:
            raise BuildError(f"{dist.metadata['Name']} has no file list (RECORD); reinstall it")
        for f in files:
            src = Path(str(dist.locate_file(f))).resolve()
            try:
                rel = src.relative_to(base)
            except ValueError:
                continue  # scripts and data installed outside site-packages
            if not _wanted(rel) or not src.is_file():
                continue
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        shipped.append(f"{dist.metadata['Name']}=={dist.version}")
    return shipped


def install_from_pypi(stage: Path) -> list[str]:
    """``pip install --target`` the relay's requirements (wheels only), then strip binaries."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(stage),
        "--no-compile",
        "--only-binary=:all:",
        *RELAY_REQUIREMENTS,
    ]
    subprocess.run(cmd, check=True)
    shutil.rmtree(stage / "bin", ignore_errors=True)
    for path in sorted(stage.rglob("*")):
        if path.is_file() and not _wanted(path.relative_to(stage)):
            path.unlink()
    for name in EXCLUDED:
        if any(stage.glob(f"{name}*")):
            raise BuildError(f"pip pulled in {name}; the relay must not need it")
    return sorted(p.name[: -len(".dist-info")] for p in stage.glob("*.dist-info"))


def copy_sources(stage: Path) -> None:
    """Copy crsync and crsync_relay (Python files and py.typed) from the source tree."""
    for package, src in SOURCES.items():
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_file() and (path.suffix == ".py" or path.name == "py.typed"):
                if "__pycache__" in rel.parts:
                    continue
                dst = stage / package / rel
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)


def check_artifact(pyz: Path, top_level: list[str]) -> dict[str, Any]:
    """Import the relay from ``pyz`` in an isolated interpreter and verify what it loaded."""
    proc = subprocess.run(
        [sys.executable, "-I", "-S", "-c", CHECK, str(pyz), *top_level],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise BuildError(f"{pyz} cannot import the relay on its own:\n{proc.stderr}")
    report: dict[str, Any] = json.loads(proc.stdout)
    if report["outside"]:
        raise BuildError(f"modules loaded from outside {pyz}: {report['outside']}")
    if report["watchfiles_importable"] or report["watchfiles_imported_by_relay"]:
        raise BuildError("watchfiles is reachable from the relay artifact")
    if report["msgpack"] != "msgpack.fallback":
        raise BuildError(f"msgpack is not the pure-Python fallback: {report['msgpack']}")
    return report


def build(output: Path, *, from_pypi: bool = False, interpreter: str = DEFAULT_INTERPRETER) -> str:
    """Build the archive at ``output`` and check it; returns a summary line."""
    with tempfile.TemporaryDirectory(prefix="crsync-relay-pyz-") as tmp:
        stage = Path(tmp) / "app"
        stage.mkdir()
        if from_pypi:
            shipped = install_from_pypi(stage)
        else:
            shipped = copy_installed(dependency_closure(), stage)
        copy_sources(stage)
        (stage / "__main__.py").write_text(MAIN)
        top_level = sorted(
            p.name if p.is_dir() else p.stem
            for p in stage.iterdir()
            if (p.is_dir() and not p.name.endswith(".dist-info"))
            or (p.suffix == ".py" and p.name != "__main__.py")
        )
        leftovers = [str(p) for p in stage.rglob("*") if p.name.endswith(COMPILED_SUFFIXES)]
        if leftovers:
            raise BuildError(f"compiled files left in the stage: {leftovers}")
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".part")
        zipapp.create_archive(stage, partial, interpreter=interpreter, compressed=True)
        try:
            check_artifact(partial, top_level)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, output)
    size = output.stat().st_size
    return f"built {output} ({size // 1024} KiB): crsync, crsync_relay, " + ", ".join(shipped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "dist" / "crsync-relay.pyz", help="archive"
    )
    parser.add_argument(
        "--from-pypi",
        action="store_true",
        help="pip install the dependencies from the package index instead of copying them "
        "from this environment",
    )
    parser.add_argument(
        "--python", default=DEFAULT_INTERPRETER, help="interpreter for the #! line of the archive"
    )
    args = parser.parse_args(argv)
    try:
        print(build(args.output, from_pypi=args.from_pypi, interpreter=args.python))
    except (BuildError, subprocess.CalledProcessError) as exc:
        print(f"build_zipapp: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
