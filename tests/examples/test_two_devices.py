"""The README's main job runs and converges (so the example cannot rot)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


@pytest.mark.e2e
def test_two_devices_example_converges_through_a_real_relay(
    run_example: Callable[..., str],
) -> None:
    out = run_example("two_devices.py")
    assert "converged: yes" in out
    last = [line for line in out.splitlines() if line.strip().startswith(("laptop:", "phone:"))]
    laptop, phone = last[-2], last[-1]
    assert laptop.split(":", 1)[1] == phone.split(":", 1)[1]
