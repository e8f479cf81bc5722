"""Test-session wiring: the real-component fixtures, a clean environment, no skips on CI."""

import os

import pytest

from tests.rig.daemon_rig import *  # noqa: F401,F403 - the daemon process and its config
from tests.rig.ldap_fixtures import *  # noqa: F401,F403 - session slapd, sample directory
from tests.rig.virt_fixtures import *  # noqa: F401,F403 - session libvirtd, cached guest
from tests.shared import on_ci

# Variables that would point provbackup or the LDAP/libvirt client libraries somewhere
# other than the rig the tests start themselves.
_LEAKY_ENV = ("LIBVIRT_DEFAULT_URI", "LDAPCONF", "LDAPRC", "LDAPURI", "LDAPBINDDN",
              "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Every test starts without environment that could redirect it."""
    for name in _LEAKY_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI a skipped test is a failed test: every capability must be proven there."""
    outcome = yield
    report = outcome.get_result()
    if on_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped on CI, which counts as a failure: {reason}"


def pytest_report_header(config):
    """Say whether skips are allowed, so a local run is never mistaken for CI."""
    return f"provbackup: CI={'yes (skips fail)' if on_ci() else 'no (skips allowed)'}, " \
           f"test cache={os.environ.get('PROVBACKUP_TEST_CACHE', '~/.cache/provbackup-tests')}"
