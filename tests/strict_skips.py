"""A pytest plugin: with ``KPROXY_TESTS_STRICT`` set (``.ci/run`` sets it), a skipped test
fails the run.

Tests that need root, network namespaces, ``dig``, ``nft`` or the compiled core skip with
their reason where the machine lacks them (inside a cibuildwheel container, on a
developer's laptop); CI runs on a machine that has everything, where a skip would hide a
test that did not run. The skipped tests are listed at the end.
"""

from __future__ import annotations

import os

import pytest

ENV = "KPROXY_TESTS_STRICT"


def strict() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


class _Skips:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.skipped:
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            self.skipped.append((report.nodeid, reason))

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if strict() and self.skipped and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if strict() and self.skipped:
            terminalreporter.section(f"{ENV} is set: {len(self.skipped)} skipped test(s) fail this run", red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(_Skips(), "kproxy-strict-skips")
