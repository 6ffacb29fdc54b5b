"""What the runnable examples share: a throw-away relay with a fresh secret and a token for
one store, and the ``--keep DIR`` work directory of their ``main``.

Scripts directly in ``examples/`` import it as ``_demo`` (their own directory is on
``sys.path``); the apps in subdirectories put ``examples/`` on ``sys.path`` first.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from crsync_relay.auth import issue_token
from crsync_relay.process import relay_process


@dataclass(frozen=True)
class DemoRelay:
    """A running relay: where to connect, a token for ``store`` and its log lines so far."""

    url: str
    store: str
    token: str
    log: list[str]


@contextmanager
def demo_relay(
    workdir: Path,
    store: str,
    subject: str,
    *,
    ttl: int = 3600,
    ready_timeout: float = 30.0,
    stop_timeout: float = 10.0,
) -> Iterator[DemoRelay]:
    """Run a ``crsync-relay`` on loopback with a fresh secret under ``workdir`` for the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    secret_file = workdir / "relay.secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    secret_file.chmod(0o600)  # the relay refuses a secret others can read
    token = issue_token(secret_file.read_bytes().strip(), [store], ttl, subject)
    with relay_process(
        workdir / "relay-data",
        secret_file=secret_file,
        ready_timeout=ready_timeout,
        stop_timeout=stop_timeout,
    ) as relay:
        yield DemoRelay(relay.url, store, token, relay.lines)


def run_in_workdir(description: str, prefix: str, run: Callable[[Path], bool]) -> int:
    """Parse ``--keep DIR``, call ``run`` in that directory (else in a temporary one that is
    removed after) and return the process exit code: 0 when ``run`` says it converged."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--keep", type=Path, help="keep the databases in this directory")
    keep: Path | None = parser.parse_args().keep
    workdir = keep or Path(tempfile.mkdtemp(prefix=prefix))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        return 0 if run(workdir) else 1
    finally:
        if keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
