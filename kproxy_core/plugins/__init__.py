"""The plugin manager: bundled plugins, the plugins handed to it, entry points; one
asking order.

:func:`make_plugin_manager` builds one; :func:`get_plugin_manager` returns the shared
default that :func:`kproxy_core.load` and :class:`kproxy_core.Engine` use when not
given one. The bundled plugins live in this package (``kproxy_core.plugins.loadbalancer``,
``.externalname``, ``.annotations``) and are also declared in the ``kproxy`` entry-point
group, exactly as a third-party plugin declares itself::

    [project.entry-points.kproxy]
    myplugin = "my_package.my_module"

Environment:

- ``KPROXY_DISABLE_PLUGIN_AUTOLOAD``: load no entry points (the test suite sets it, so that
  what happens to be installed does not change results);
- ``KPROXY_DISABLE_PLUGINS=name,...``: leave out the named plugins (entry points, bundled
  plugins, or plugins handed to the manager, by the name ``kproxy plugins`` shows);
- ``KPROXY_TRACE_PLUGINS=1``: log every hook call and handler call to stderr.

**Asking order.** Every hook asks the plugins in one documented order, whatever the
install order: ``tryfirst`` implementations, then plain ones, then ``trylast`` ones; within
each, higher ``kproxy_priority`` first (an int attribute of the plugin object or module;
default 0, bundled plugins -1000), then the plugin's name (its entry-point name) in
alphabetical order. A firstresult hook (``kproxy_endpoint_selector``,
``kproxy_endpoint_weights``, ``kproxy_read_object``) takes the first answer that is not
None. ``kproxy_register_service_types`` runs in the reverse order, so that a plugin asked
earlier registers later and may replace (``replace=True``) a type of one asked later.

A failure anywhere in a plugin (importing it, a hook implementation with a misspelled
name or an unknown argument, an exception in a hook or a handler, an answer of the wrong
type) becomes a :class:`kproxy_core.errors.PluginError` whose message names the plugin and
the hook, and what to do about it.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import inspect
import os
import re
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pluggy
from pluggy._manager import DistFacade  # type: ignore[attr-defined]  # what pluggy records per entry point

from .. import hookspecs
from ..errors import ManifestError, PluginError, PluginWarning
from ..hookspecs import NAME
from ..servicetypes import ServiceTypeRegistry, trace_writer

BUNDLED: tuple[tuple[str, str], ...] = (
    ("loadbalancer", "kproxy_core.plugins.loadbalancer"),
    ("externalname", "kproxy_core.plugins.externalname"),
    ("annotations", "kproxy_core.plugins.annotations"),
)
BUNDLED_PRIORITY = -1000
PRIORITY_ATTRIBUTE = "kproxy_priority"
AUTOLOAD_OFF_ENV = "KPROXY_DISABLE_PLUGIN_AUTOLOAD"
DISABLE_ENV = "KPROXY_DISABLE_PLUGINS"
TRACE_ENV = "KPROXY_TRACE_PLUGINS"

HOOKS: tuple[str, ...] = tuple(sorted(n for n, f in vars(hookspecs).items() if n.startswith("kproxy_") and callable(f)))
FIRSTRESULT = frozenset({"kproxy_endpoint_selector", "kproxy_endpoint_weights", "kproxy_read_object"})


@dataclass(frozen=True)
class PluginFailure:
    """A plugin the manager could not load: its name, where it comes from
    (``module from distribution version``) and why."""

    name: str
    where: str
    reason: str
    distribution: str | None = None

    def message(self) -> str:
        fix = f"KPROXY_DISABLE_PLUGINS={self.name} runs without it"
        if self.distribution:
            fix += f", `pip uninstall {self.distribution}` removes it"
        return f"plugin {self.name}: loading {self.where} failed: {self.reason} ({fix})"


class KproxyPluginManager(pluggy.PluginManager):
    """A pluggy manager for the ``kproxy`` hooks, with the Service-type registry its
    plugins filled. Build one with :func:`make_plugin_manager`; call hooks through
    :meth:`call_hook` or :meth:`answers`, which ask in the documented order."""

    registry: ServiceTypeRegistry
    tracing: bool
    failed: tuple[PluginFailure, ...]
    disabled: tuple[str, ...]

    def __init__(self, project_name: str = NAME) -> None:
        super().__init__(project_name)
        self.tracing = False
        self.failed = ()
        self.disabled = ()
        self._priorities: dict[str, int] = {}
        self._orders: dict[str, list[Any]] = {}
        self._warned: set[tuple[str, tuple[str, ...]]] = set()
        self._order_lock = threading.Lock()

    # ------------------------------------------------------------------ registration
    def register(self, plugin: object, name: str | None = None) -> str | None:
        """pluggy's ``register``, with the plugin's ``kproxy_priority`` checked and kept."""
        got = super().register(plugin, name)
        if got is not None:
            prio = getattr(plugin, PRIORITY_ATTRIBUTE, 0)
            if not isinstance(prio, int) or isinstance(prio, bool):
                super().unregister(name=got)
                raise PluginError(f"plugin {got}: {PRIORITY_ATTRIBUTE} must be an int, not {prio!r}")
            self._priorities.setdefault(got, prio)
        self._orders.clear()
        return got

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any:
        got = super().unregister(plugin, name)
        self._orders.clear()
        return got

    def priority(self, name: str) -> int:
        """The priority the plugin registered as ``name`` is asked with."""
        return self._priorities.get(name, 0)

    # ------------------------------------------------------------------ asking
    def asking_order(self, hook: str) -> list[Any]:
        """The implementations of ``hook`` (pluggy ``HookImpl``s) in the order they are asked."""
        order = self._orders.get(hook)
        if order is None:
            impls = getattr(self.hook, hook).get_hookimpls()
            order = sorted(
                impls,
                key=lambda i: (0 if i.tryfirst else 2 if i.trylast else 1, -self.priority(i.plugin_name),
                               i.plugin_name),
            )
            with self._order_lock:
                self._orders[hook] = order
        return order

    def implementers(self, hook: str) -> list[str]:
        """The names of the plugins implementing ``hook``, in asking order."""
        return [i.plugin_name for i in self.asking_order(hook)]

    def _call(self, impl: Any, hook: str, kwargs: Mapping[str, Any], context: str) -> Any:
        if self.tracing:
            sys.stderr.write(f"{impl.plugin_name}: {hook} [hook]{(' ' + context) if context else ''}\n")
        args = [kwargs[a] for a in impl.argnames]
        extra = {k: kwargs[k] for k in impl.kwargnames if k in kwargs}
        try:
            return impl.function(*args, **extra)
        except (PluginError, ManifestError):  # ManifestError: the input is wrong, and the plugin says so
            raise
        except Exception as e:
            where = f" for {context}" if context else ""
            raise PluginError(
                f"plugin {impl.plugin_name}: hook {hook} failed{where}: {type(e).__name__}: {e}"
            ) from e

    def answers(self, hook: str, *, context: str = "", stop: bool = False, **kwargs: Any) -> list[tuple[str, Any]]:
        """``(plugin name, answer)`` of every implementation of ``hook`` that answered (not
        None), in asking order; ``stop``: only the first. ``context`` (``Service ns/name
        port http``) goes into failure messages. An exception becomes a PluginError naming
        the plugin, the hook and the context."""
        out: list[tuple[str, Any]] = []
        for impl in self.asking_order(hook):
            got = self._call(impl, hook, kwargs, context)
            if got is not None:
                out.append((impl.plugin_name, got))
                if stop:
                    break
        return out

    def call_hook(self, name: str, *, context: str = "", **kwargs: Any) -> Any:
        """Call a hook in asking order: a firstresult hook returns the first answer that is
        not None (or None), another the list of answers. Failures are PluginErrors naming
        the plugin, the hook and ``context`` (what was being read or planned)."""
        got = self.answers(name, context=context, stop=name in FIRSTRESULT, **kwargs)
        if name in FIRSTRESULT:
            return got[0][1] if got else None
        return [answer for _, answer in got]

    def warn_once(self, hook: str, plugins: tuple[str, ...], message: str) -> None:
        """Issue ``message`` as a :class:`PluginWarning`, once per hook and set of plugins."""
        key = (hook, plugins)
        if key in self._warned:
            return
        self._warned.add(key)
        warnings.warn(PluginWarning(message), stacklevel=3)

    def plugin_names(self) -> list[str]:
        """Registered plugin names, in registration order."""
        return [name for name, plugin in self.list_name_plugin() if plugin is not None]  # None: blocked

    def asking_names(self) -> list[str]:
        """Registered plugin names in asking order (before ``tryfirst``/``trylast``, which
        are per hook): priority, then name."""
        return sorted(self.plugin_names(), key=lambda n: (-self.priority(n), n))


def disabled_from_environment() -> tuple[str, ...]:
    """The names ``KPROXY_DISABLE_PLUGINS`` lists (comma- or space-separated)."""
    return _names(os.environ.get(DISABLE_ENV, ""))


def _names(names: str | Iterable[str]) -> tuple[str, ...]:
    """Plugin names from an iterable or from one string (``"a"``, ``"a,b"``, ``"a b"``):
    a string is never read as its letters."""
    if isinstance(names, str):
        return tuple(n for n in re.split(r"[,\s]+", names) if n)
    return tuple(names)


def make_plugin_manager(
    plugins: Iterable[object] = (),
    *,
    entry_points: bool | str | Iterable[str] | None = None,
    bundled: bool = True,
    trace: bool | None = None,
    disabled: str | Iterable[str] | None = None,
    keep_going: bool = False,
) -> KproxyPluginManager:
    """Build a plugin manager.

    ``plugins``: extra plugin objects (modules, classes or instances with hook
    implementations). ``entry_points``: load the ``kproxy`` entry-point group (default:
    yes, unless ``KPROXY_DISABLE_PLUGIN_AUTOLOAD`` is set), or an iterable of entry-point
    names to load only those (a name that is not installed is an error; one string is
    one name, or several separated by commas or spaces). ``bundled``:
    register the bundled plugins (LoadBalancer, ExternalName and the selector
    annotations). ``disabled``: plugin names to leave out (default:
    ``KPROXY_DISABLE_PLUGINS``; a string as for ``entry_points``). ``trace``: log hook calls to stderr (default:
    ``KPROXY_TRACE_PLUGINS``). ``keep_going``: an entry point that fails to load is
    recorded in ``manager.failed`` instead of raising (``kproxy plugins`` lists it).
    """
    pm = KproxyPluginManager(NAME)
    pm.add_hookspecs(hookspecs)
    pm.tracing = bool(os.environ.get(TRACE_ENV)) if trace is None else trace  # _call writes the lines
    off = set(disabled_from_environment() if disabled is None else _names(disabled))
    pm.disabled = tuple(sorted(off))
    for name in off:
        pm.set_blocked(name)
    if bundled:
        for name, module in BUNDLED:
            if name not in off:
                _register(pm, importlib.import_module(module), name, BUNDLED_PRIORITY)
    for plugin in plugins:
        _register(pm, plugin, None)
    if entry_points is None:
        entry_points = not os.environ.get(AUTOLOAD_OFF_ENV)
    if entry_points is not False:
        wanted = None if entry_points is True else set(_names(entry_points))
        _load_entry_points(pm, wanted, keep_going)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        culprit = e.plugin if isinstance(e.plugin, str) else pm.get_name(e.plugin)
        raise PluginError(f"plugin {culprit}: {_pluggy_message(e)}") from None
    pm.registry = ServiceTypeRegistry(trace_writer() if pm.tracing else None)
    # the reverse of the asking order: a plugin asked earlier registers later and may replace
    for impl in reversed(pm.asking_order("kproxy_register_service_types")):
        with pm.registry.registering_for(impl.plugin_name):
            try:
                try:
                    impl.function(registry=pm.registry)
                except PluginError:
                    raise
                except Exception as e:
                    raise PluginError(
                        f"plugin {impl.plugin_name}: hook kproxy_register_service_types failed: "
                        f"{type(e).__name__}: {e}"
                    ) from e
            except PluginError as e:
                if not keep_going:
                    raise
                pm.failed += (PluginFailure(impl.plugin_name, _where(pm, impl.plugin),
                                            str(e).removeprefix(f"plugin {impl.plugin_name}: ")),)
    return pm


def _where(pm: KproxyPluginManager, plugin: object) -> str:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return f"{getattr(plugin, '__name__', type(plugin).__name__)} from {dist.project_name} {dist.version}"
    return getattr(plugin, "__name__", type(plugin).__name__)


def _register(pm: KproxyPluginManager, plugin: object, name: str | None, priority: int | None = None) -> None:
    if name is None:  # pluggy would name an instance by its id(); errors read better by class
        base = getattr(plugin, "__name__", None) or type(plugin).__name__
        name, n = base, 1
        while pm.has_plugin(name):
            n += 1
            name = f"{base}#{n}"
        if pm.is_blocked(name):
            return
    _check_hookimpls(pm, plugin, name)
    if priority is not None:
        pm._priorities[name] = priority
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"plugin {name}: {_pluggy_message(e)}") from None
    except ValueError as e:  # registered twice
        raise PluginError(f"plugin {name or pm.get_canonical_name(plugin)}: {e}") from None


def _nearest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _argnames(func: Callable[..., Any]) -> list[str]:
    """The names a hook implementation asks for (``self``/``cls`` of an unbound method left out)."""
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return []
    names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if names and names[0] in ("self", "cls") and not inspect.ismethod(func) and "." in getattr(
            func, "__qualname__", ""):
        names = names[1:]
    return names


def _check_hookimpls(pm: KproxyPluginManager, plugin: object, name: str) -> None:
    """What pluggy checks at registration, worded for a plugin author: an unknown hook or
    argument is named with the valid ones and the nearest; a wrapper is refused (kproxy
    asks hooks itself, in its documented order). A function named like a hook but not
    marked ``@hookimpl`` is never called: that is a :class:`PluginWarning`."""
    for attr in dir(plugin):
        if not attr.startswith("kproxy_"):
            continue
        try:
            func = getattr(plugin, attr)
        except Exception:  # pragma: no cover - a property that raises
            continue
        opts = pm.parse_hookimpl_opts(plugin, attr)
        if opts is None:
            if callable(func) and not isinstance(func, type):
                fix = " (add the marker)" if attr in HOOKS else _nearest(attr, HOOKS)
                warnings.warn(PluginWarning(
                    f"plugin {name}: {attr} is not marked @kproxy_core.hookimpl, so it is never called{fix}"),
                    stacklevel=4)
            continue
        if attr not in HOOKS:
            if not opts.get("optionalhook"):
                raise PluginError(
                    f"plugin {name}: unknown hook {attr!r}{_nearest(attr, HOOKS)} "
                    f"(the hooks: {', '.join(HOOKS)})"
                )
            continue
        if opts.get("wrapper") or opts.get("hookwrapper"):
            raise PluginError(f"plugin {name}: hook {attr}: wrappers are not supported (kproxy asks every "
                              "implementation itself, in its documented order); drop wrapper=/hookwrapper=")
        spec = [p for p in inspect.signature(getattr(hookspecs, attr)).parameters]
        for arg in _argnames(func):
            if arg not in spec:
                raise PluginError(
                    f"plugin {name}: hook {attr}: argument {arg!r} is not one of its arguments "
                    f"({', '.join(spec)}){_nearest(arg, spec)}"
                )


def _pluggy_message(e: Exception) -> str:
    """pluggy's text without its ``in plugin <object repr>`` parts (the name says it)."""
    return re.sub(r"\s+in plugin\s+(<[^>]*>|'[^']*'|\S+)", "", " ".join(str(e).split()))


def _load_entry_points(pm: KproxyPluginManager, wanted: set[str] | None, keep_going: bool) -> None:
    """pluggy's ``load_setuptools_entrypoints``, with failures named: an entry point
    whose name is already registered (a bundled plugin) is skipped; ``wanted``: only
    these names, each of which must be installed."""
    found: set[str] = set()
    failed: list[PluginFailure] = []
    seen_dists: set[str] = set()
    for dist in list(importlib.metadata.distributions()):
        dist_name = dist.metadata["Name"]
        if dist_name in seen_dists:  # the same distribution twice on sys.path: the first wins
            continue
        seen_dists.add(dist_name)
        for ep in dist.entry_points:
            if ep.group != NAME or (wanted is not None and ep.name not in wanted):
                continue
            found.add(ep.name)
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            where = f"{ep.value} from {dist_name} {dist.version}"
            try:
                plugin = ep.load()
            except Exception as e:
                failure = PluginFailure(ep.name, where, f"{type(e).__name__}: {e}", dist_name)
                if not keep_going:
                    raise PluginError(failure.message()) from e
                failed.append(failure)
                continue
            try:
                _register(pm, plugin, ep.name)
            except PluginError as e:
                if not keep_going:
                    raise
                failed.append(PluginFailure(ep.name, where, str(e).removeprefix(f"plugin {ep.name}: "), dist_name))
                continue
            # what pluggy's own loader records, so list_plugin_distinfo() names the distribution
            pm._plugin_distinfo.append((plugin, DistFacade(dist)))  # type: ignore[arg-type]
    pm.failed = tuple(failed)
    if wanted is not None and wanted - found:
        missing = sorted(wanted - found)
        raise PluginError(
            f"plugin {missing[0]}: no such entry point in the {NAME!r} group "
            f"(installed: {', '.join(sorted(_installed_names())) or 'none'})"
        )


def _installed_names() -> set[str]:
    return {ep.name for ep in importlib.metadata.entry_points(group=NAME)}


_default: KproxyPluginManager | None = None
_default_lock = threading.Lock()


def get_plugin_manager() -> KproxyPluginManager:
    """The shared default manager (built on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = make_plugin_manager()
        return _default


def peek_plugin_manager() -> KproxyPluginManager | None:
    """The shared default manager if one is set or built, without building one."""
    with _default_lock:
        return _default


def set_plugin_manager(pm: KproxyPluginManager | None) -> None:
    """Replace the shared default manager (None: rebuild it on next use)."""
    global _default
    with _default_lock:
        _default = pm
