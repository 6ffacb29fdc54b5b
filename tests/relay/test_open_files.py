"""The relay fits its cap on open stores under the process's open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

from crsync_relay.server import FILES_PER_STORE, FILES_RESERVED


def test_store_cap_is_lowered_to_fit_a_hard_open_files_limit() -> None:
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512));"
        "from crsync_relay.server import fit_open_files; print(fit_open_files(256)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == (512 - FILES_RESERVED) // FILES_PER_STORE


def test_soft_limit_is_raised_toward_the_hard_limit_when_needed() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = FILES_RESERVED + FILES_PER_STORE * 100
    code = (
        "import resource;"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, (256, {hard if hard != -1 else 1 << 20}));"
        "from crsync_relay.server import fit_open_files; n = fit_open_files(100)[0];"
        "print(n, resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    n, new_soft = map(int, out.stdout.split())
    if hard == resource.RLIM_INFINITY or hard >= want:
        assert (n, new_soft) == (100, want)
    else:
        assert n == (hard - FILES_RESERVED) // FILES_PER_STORE


def test_connections_share_the_open_files_budget_with_stores() -> None:
    """Security review M3: idle sockets used to exhaust descriptors the stores needed."""
    code = (
        "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512));"
        "from crsync_relay.server import fit_open_files; print(*fit_open_files(256, 1000))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    stores, conns = map(int, out.stdout.split())
    assert stores >= 1 and conns >= 1
    assert FILES_RESERVED + FILES_PER_STORE * stores + conns <= 512
