"""kproxy-core's pytest plugin, registered through the ``pytest11`` entry point ``kproxy``.

A top-level module on purpose: pytest imports every installed ``pytest11`` plugin in every
run, and importing anything inside ``kproxy_core`` imports the package (numpy, the compiled
core). Here nothing of kproxy-core is imported until a test asks for the fixture. The
fixture is documented in :mod:`kproxy_core.pytest_plugin`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from kproxy_core.plugins import KproxyPluginManager


@pytest.fixture
def kproxy_plugin_manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make a kproxy plugin manager (``kproxy_core.testing.plugin_manager``) that is also
    the shared default until the test ends; ``KPROXY_DISABLE_PLUGIN_AUTOLOAD=1`` meanwhile."""
    from kproxy_core import plugins, testing

    previous = plugins.peek_plugin_manager()  # possibly None: get_plugin_manager() would build one
    monkeypatch.setenv(plugins.AUTOLOAD_OFF_ENV, "1")

    @functools.wraps(testing.plugin_manager)
    def make(*given: object, entry_points: Iterable[str] = (), bundled: bool = True) -> KproxyPluginManager:
        pm = testing.plugin_manager(*given, entry_points=entry_points, bundled=bundled)
        plugins.set_plugin_manager(pm)
        return pm

    try:
        yield make
    finally:
        plugins.set_plugin_manager(previous)
