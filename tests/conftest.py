"""Which event loop runs an async test.

* Tests marked ``anyio`` (``pytestmark = pytest.mark.anyio``: the Peer, live-query and fault
  suites) run once on asyncio and once on trio, through anyio's pytest plugin and the
  ``anyio_backend`` fixture below. A test that only makes sense on one of them overrides it
  (``@pytest.mark.parametrize("anyio_backend", ["trio"])``) and says why.
* Every other ``async def`` test runs on trio (pytest-trio), as the whole suite did under
  ``trio_mode``; the relay is a trio program.
"""

from __future__ import annotations

from inspect import iscoroutinefunction

import pytest

BACKENDS = ("asyncio", "trio")


@pytest.fixture(params=BACKENDS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loop of an ``anyio``-marked test: each runs on both."""
    return str(request.param)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or item.get_closest_marker("anyio"):
            continue
        hypothesis = getattr(item.obj, "hypothesis", None)
        func = hypothesis.inner_test if hypothesis is not None else item.obj
        if iscoroutinefunction(func):
            item.add_marker(pytest.mark.trio)
