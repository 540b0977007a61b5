"""Shared fixtures: every engine test runs over both twins (compiled and pure Python)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

import kproxy_core as kp

pytest_plugins = ["strict_skips", "pytester"]

IMPLS = ["compiled", "python"]

# Whatever kproxy plugins happen to be installed must not change results; tests that
# want entry points ask for them (make_plugin_manager(entry_points=True), or a
# subprocess environment without this variable).
os.environ.setdefault("KPROXY_DISABLE_PLUGIN_AUTOLOAD", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test module may define ``deselect(params) -> bool``: parameter combinations it
    names are not collected (rather than collected and skipped)."""
    keep, drop = [], []
    for item in items:
        rule = getattr(getattr(item, "module", None), "deselect", None)
        callspec = getattr(item, "callspec", None)
        (drop if rule is not None and callspec is not None and rule(callspec.params) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    if request.param == "compiled" and not kp.COMPILED_AVAILABLE:
        if os.environ.get("KPROXY_NO_EXTENSIONS"):
            pytest.skip("KPROXY_NO_EXTENSIONS is set")
        pytest.fail("kproxy_core._engine is not built; install the package first")
    return str(request.param)


@pytest.fixture
def make_engine(impl: str) -> Callable[..., kp.Engine]:
    def make(objects: Any, **kw: Any) -> kp.Engine:
        cluster = objects if isinstance(objects, kp.Cluster) else kp.Cluster.from_objects(objects)
        kw.setdefault("seed", 12345)
        return kp.Engine(cluster, impl=impl, **kw)

    return make
