"""The Django example runs: two Django processes on their own files sync through a relay."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("django")


@pytest.mark.e2e
@pytest.mark.slow
def test_django_app_example_syncs_two_devices(run_example: Callable[..., str]) -> None:
    out = run_example("django_app/app.py", timeout=180)
    assert "  phone: ['buy milk', 'call mum']" in out
    assert out.splitlines()[-2] == "  laptop: ['buy milk', 'call mum']"
    assert out.rstrip().endswith("converged: yes")
