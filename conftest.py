"""Repository-wide pytest policy.

KUASAR_REQUIRE_ALL=1 (set by CI): a test may only skip when its component cannot exist on this
machine, and it must say so with the words "cannot exist on this machine" in its reason. Any other
skip (typically "X is not installed") then fails the run, so a broken install never hides tests.
"""
import os

import pytest

# Daemons fork their helpers before grpc starts; the test process, however, runs many grpc servers
# before a fixture forks a runc holder helper, and grpc's fork handlers then abort the child.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

ALLOWED = "cannot exist on this machine"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("KUASAR_REQUIRE_ALL") != "1" or not report.skipped:
        return
    reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
    if ALLOWED not in reason:
        report.outcome = "failed"
        report.longrepr = f"KUASAR_REQUIRE_ALL=1 forbids this skip: {reason}"
