"""Exceptions of kproxy-core: one root, each also the built-in a caller would expect."""

from __future__ import annotations

from collections.abc import Sequence


class KproxyError(Exception):
    """Root of every error kproxy-core raises on purpose."""


class ManifestError(KproxyError, ValueError):
    """Bad input: one or more problems, each one line naming kind/namespace/name and field.

    ``problems`` holds the lines; ``str(err)`` joins them with newlines.
    """

    def __init__(self, problems: Sequence[str] | str) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems)
        )
        super().__init__("\n".join(self.problems))


class NodeNotFoundError(KproxyError, KeyError):
    """The node named for the engine's view is not in the cluster."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ServiceNotFoundError(KproxyError, KeyError):
    """A service port name that the engine does not know."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class PacketError(KproxyError, ValueError):
    """A packet that cannot be looked up (bad address, port or protocol)."""


class EngineError(KproxyError, RuntimeError):
    """The compiled core reported a failure (out of memory, inconsistent tables)."""


class PluginError(KproxyError, RuntimeError):
    """A plugin failed: loading it, a hook it implements, or a Service type handler it
    registered. The message names the plugin and the hook (or handler method)."""


class KproxyWarning(UserWarning):
    """Root of the warnings kproxy-core issues with :func:`warnings.warn`."""


class PluginWarning(KproxyWarning):
    """A plugin works, but not as its author may think: a function named like a hook
    without ``@hookimpl`` (never called), or two plugins answering the same firstresult
    hook for one service port (the first in asking order wins)."""
