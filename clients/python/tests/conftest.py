"""pytest glue: the ``herald`` fixture (a running gateway per test) and a
runner for ``async def`` tests (``asyncio.run``, no plugin), each bounded
by ``TEST_TIMEOUT_S``."""

import asyncio
import inspect
import signal

import pytest

from harness import Herald

TEST_TIMEOUT_S = 30.0


@pytest.fixture
def herald(request):
    """A running herald; ``@pytest.mark.herald(hub__history_size=8, ...)``
    sets config keys (``HERALD_<KEY>``)."""
    marker = request.node.get_closest_marker("herald")
    h = Herald(**(marker.kwargs if marker else {}))
    h.start()
    try:
        yield h
    finally:
        if h.proc is not None and h.proc.poll() is None:
            h.stop(signal.SIGKILL)


def pytest_configure(config):
    config.addinivalue_line("markers", "herald(**config): herald config keys for this test")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Run ``async def`` tests with asyncio.run, bounded in time."""
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(asyncio.wait_for(fn(**args), TEST_TIMEOUT_S))
    return True
