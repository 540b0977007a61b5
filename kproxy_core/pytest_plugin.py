"""kproxy-core's pytest plugin: the fixture ``kproxy_plugin_manager``.

pytest loads it by itself once kproxy-core is installed (the ``pytest11`` entry point
``kproxy``, the top-level module ``_kproxy_pytestplugin``, which imports nothing of
kproxy-core until the fixture is used; ``-p no:kproxy`` turns it off,
``-p _kproxy_pytestplugin`` loads it from a source tree that is not installed). It
defines that one fixture, no hook and no autouse fixture: a test suite that does not use
it runs as it would without it.

``kproxy_plugin_manager`` is a factory with the signature of
:func:`kproxy_core.testing.plugin_manager`: the bundled plugins, the plugin objects given
and the installed entry points named, nothing else. While the test runs,
``KPROXY_DISABLE_PLUGIN_AUTOLOAD=1`` is set and every manager the factory makes also
becomes the shared default (:func:`kproxy_core.plugins.set_plugin_manager`), so code that
falls back to the default manager (``kp.load(path)``, ``kp.Cluster.from_objects(objs)``
and ``kp.Engine(cluster, ...)`` without ``plugins=``) sees those plugins and nothing else
installed. When the test ends, the previous default and the environment come back::

    import kproxy_core as kp
    from kproxy_core.testing import assert_candidates, endpoint_slice, service


    class Heavy:
        @kp.hookimpl
        def kproxy_endpoint_weights(self, endpoints):
            return [3 if e.ip.endswith(".5") else 1 for e in endpoints]


    def test_heavy(kproxy_plugin_manager):
        kproxy_plugin_manager(Heavy())  # the default manager until the test ends
        cluster = kp.Cluster.from_objects([service("web"), endpoint_slice("web", ["10.1.0.5", "10.1.0.6"])])
        trace = kp.Engine(cluster, node=None).trace("10.2.0.1", "10.96.0.10", 80)
        assert_candidates(trace, {"10.1.0.5:8080": 0.75, "10.1.0.6:8080": 0.25})

A distribution tests its installed entry point the same way:
``kproxy_plugin_manager(entry_points=["myplugin"])``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .plugins import KproxyPluginManager

__all__ = ["PluginManagerFactory", "kproxy_plugin_manager"]


class PluginManagerFactory(Protocol):
    """The type of the ``kproxy_plugin_manager`` fixture (for annotating tests)."""

    def __call__(
        self, *plugins: object, entry_points: Iterable[str] = (), bundled: bool = True
    ) -> KproxyPluginManager: ...


# the fixture itself lives in a top-level module, so that pytest's loading it in every run
# does not import kproxy-core: this module is its documented home and re-exports it
from _kproxy_pytestplugin import kproxy_plugin_manager as kproxy_plugin_manager  # noqa: E402
