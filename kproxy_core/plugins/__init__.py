"""The plugin manager: bundled plugins, then entry points, then ``check_pending()``.

:func:`make_plugin_manager` builds one; :func:`get_plugin_manager` returns the shared
default that :func:`kproxy_core.load` and :class:`kproxy_core.Engine` use when not
given one. The bundled plugins live in this package (``kproxy_core.plugins.loadbalancer``,
``.externalname``, ``.annotations``) and are also declared in the ``kproxy`` entry-point
group, exactly as a third-party plugin declares itself::

    [project.entry-points.kproxy]
    myplugin = "my_package.my_module"

Entry points are loaded unless ``KPROXY_DISABLE_PLUGIN_AUTOLOAD`` is set in the
environment (the test suite sets it, so that what happens to be installed does not
change results; a test asks for them with ``entry_points=True``).
``KPROXY_TRACE_PLUGINS=1`` logs every hook call and handler call to stderr.

A failure anywhere in a plugin (importing it, a hook implementation with a misspelled
name or an unknown argument, an exception in a hook or a handler) becomes a
:class:`kproxy_core.errors.PluginError` whose message names the plugin and the hook.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import pluggy
from pluggy._manager import DistFacade  # type: ignore[attr-defined]  # what pluggy records per entry point

from .. import hookspecs
from ..errors import ManifestError, PluginError
from ..hookspecs import NAME
from ..servicetypes import ServiceTypeRegistry, trace_writer

BUNDLED: tuple[tuple[str, str], ...] = (
    ("loadbalancer", "kproxy_core.plugins.loadbalancer"),
    ("externalname", "kproxy_core.plugins.externalname"),
    ("annotations", "kproxy_core.plugins.annotations"),
)
AUTOLOAD_OFF_ENV = "KPROXY_DISABLE_PLUGIN_AUTOLOAD"
TRACE_ENV = "KPROXY_TRACE_PLUGINS"


class KproxyPluginManager(pluggy.PluginManager):
    """A pluggy manager for the ``kproxy`` hooks, with the Service-type registry its
    plugins filled. Build one with :func:`make_plugin_manager`."""

    registry: ServiceTypeRegistry
    tracing: bool

    def call_hook(self, name: str, **kwargs: Any) -> Any:
        """``self.hook.<name>(**kwargs)``; an exception in an implementation becomes a
        PluginError naming the plugin and the hook."""
        caller = getattr(self.hook, name)
        try:
            return caller(**kwargs)
        except (PluginError, ManifestError):
            raise
        except Exception as e:
            plugin = self._culprit(name, e.__traceback__)
            raise PluginError(f"plugin {plugin}: hook {name} failed: {type(e).__name__}: {e}") from e

    def _culprit(self, hook: str, tb: TracebackType | None) -> str:
        codes = {
            getattr(impl.function, "__code__", None): impl.plugin_name
            for impl in getattr(self.hook, hook).get_hookimpls()
        }
        found = "unknown"
        while tb is not None:
            name = codes.get(tb.tb_frame.f_code)
            if name is not None:
                found = name
            tb = tb.tb_next
        return found

    def plugin_names(self) -> list[str]:
        """Registered plugin names, in registration order."""
        return [name for name, _ in self.list_name_plugin()]


def make_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    entry_points: bool | None = None,
    bundled: bool = True,
    trace: bool | None = None,
) -> KproxyPluginManager:
    """Build a plugin manager.

    ``plugins``: extra plugin objects (modules, classes or instances with hook
    implementations), registered after the bundled ones. ``entry_points``: load the
    ``kproxy`` entry-point group (default: yes, unless ``KPROXY_DISABLE_PLUGIN_AUTOLOAD``
    is set). ``bundled``: register the bundled plugins (LoadBalancer, ExternalName and
    the selector annotations). ``trace``: log hook calls to stderr (default:
    ``KPROXY_TRACE_PLUGINS``).
    """
    pm = KproxyPluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    pm.tracing = bool(os.environ.get(TRACE_ENV)) if trace is None else trace
    if pm.tracing:
        pm.trace.root.setwriter(trace_writer())
        pm.enable_tracing()
    if bundled:
        for name, module in BUNDLED:
            _register(pm, importlib.import_module(module), name)
    for plugin in plugins:
        _register(pm, plugin, None)
    if entry_points is None:
        entry_points = not os.environ.get(AUTOLOAD_OFF_ENV)
    if entry_points:
        _load_entry_points(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        culprit = e.plugin if isinstance(e.plugin, str) else pm.get_name(e.plugin)
        raise PluginError(f"plugin {culprit}: {_pluggy_message(e)}") from None
    pm.registry = ServiceTypeRegistry(trace_writer() if pm.tracing else None)
    # registration order (bundled first), so that a later plugin can replace a type
    for impl in pm.hook.kproxy_register_service_types.get_hookimpls():
        with pm.registry.registering_for(impl.plugin_name):
            try:
                impl.function(registry=pm.registry)
            except PluginError:
                raise
            except Exception as e:
                raise PluginError(
                    f"plugin {impl.plugin_name}: hook kproxy_register_service_types failed: "
                    f"{type(e).__name__}: {e}"
                ) from e
    return pm


def _register(pm: KproxyPluginManager, plugin: object, name: str | None) -> None:
    if name is None:  # pluggy would name an instance by its id(); errors read better by class
        base = getattr(plugin, "__name__", None) or type(plugin).__name__
        name, n = base, 1
        while pm.has_plugin(name):
            n += 1
            name = f"{base}#{n}"
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {name}: {_pluggy_message(e)}") from None
    except ValueError as e:  # registered twice
        raise PluginError(f"plugin {name or pm.get_canonical_name(plugin)}: {e}") from None


def _pluggy_message(e: Exception) -> str:
    """pluggy's text without its ``in plugin <object repr>`` parts (the name says it)."""
    return re.sub(r"\s+in plugin\s+(<[^>]*>|'[^']*'|\S+)", "", " ".join(str(e).split()))


def _load_entry_points(pm: KproxyPluginManager) -> None:
    """pluggy's ``load_setuptools_entrypoints``, with failures named: an entry point
    whose name is already registered (a bundled plugin) is skipped."""
    for dist in list(importlib.metadata.distributions()):
        for ep in dist.entry_points:
            if ep.group != NAME or pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            where = f"{ep.value} from {dist.metadata['Name']} {dist.version}"
            try:
                plugin = ep.load()
            except Exception as e:
                raise PluginError(f"plugin {ep.name}: loading {where} failed: {type(e).__name__}: {e}") from e
            _register(pm, plugin, ep.name)
            # what pluggy's own loader records, so list_plugin_distinfo() names the distribution
            pm._plugin_distinfo.append((plugin, DistFacade(dist)))  # type: ignore[arg-type]


_default: KproxyPluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> KproxyPluginManager:
    """The shared default manager (built on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = make_plugin_manager()
        return _default


def set_plugin_manager(pm: KproxyPluginManager | None) -> None:
    """Replace the shared default manager (None: rebuild it on next use)."""
    global _default
    with _default_lock:
        _default = pm
