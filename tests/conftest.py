"""Shared fixtures: every engine test runs over both twins (compiled and pure Python)."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from typing import Any

import hypothesis
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


# --------------------------------------------------------------------------- hypothesis: one seed a run
# Every @given test of a run draws its examples from one seed, printed in pytest's header and
# under each failing hypothesis test: KPROXY_TEST_SEED=<seed> reruns exactly those examples.
# It reaches hypothesis as --hypothesis-seed does (given on the command line, that one wins).
# A seeded run uses no example database, so the seed alone decides; a test that sets
# derandomize=True keeps its fixed examples. The profile replaces hypothesis's automatic "ci"
# one (derandomize=True: the same examples every run, whatever the seed).
SEED_ENV = "KPROXY_TEST_SEED"
_SEED_KEY = pytest.StashKey[tuple[str, str]]()

hypothesis.settings.register_profile(
    "kproxy", derandomize=False, database=None, deadline=None, print_blob=True,
    suppress_health_check=[hypothesis.HealthCheck.too_slow])
hypothesis.settings.load_profile("kproxy")


@pytest.hookimpl(tryfirst=True)  # before hypothesis's own plugin reads the option
def pytest_configure(config: pytest.Config) -> None:
    seed, origin = config.getoption("hypothesis_seed", None), "--hypothesis-seed"
    if seed is None:
        seed, origin = os.environ.get(SEED_ENV, "").strip() or None, SEED_ENV
    if seed is None:
        seed, origin = str(random.SystemRandom().randrange(2**32)), "drawn for this run"
    config.option.hypothesis_seed = str(seed)
    config.stash[_SEED_KEY] = (str(seed), origin)


def pytest_report_header(config: pytest.Config) -> str:
    seed, origin = config.stash[_SEED_KEY]
    return f"kproxy: hypothesis seed {seed} ({origin}); {SEED_ENV}={seed} reruns its examples"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome: Any = yield
    report = outcome.get_result()
    obj = getattr(item, "obj", None)
    if report.when != "call" or not report.failed or not hypothesis.is_hypothesis_test(obj):
        return
    seed, _ = item.config.stash[_SEED_KEY]
    if getattr(getattr(obj, "_hypothesis_internal_use_settings", None), "derandomize", False):
        text = "derandomize=True: the same examples every run, whatever the seed"
    else:
        text = f"{SEED_ENV}={seed} python -m pytest '{item.nodeid}'"
    report.sections.append(("hypothesis seed", text))
