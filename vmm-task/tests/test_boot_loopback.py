"""boot.loopback_up: ``lo`` comes up by ioctl, in a network namespace of the test's own."""
import os
import subprocess
import sys
import uuid

import pytest

SNIPPET = "from kuasar_vmm_task.boot import loopback_up; loopback_up(); loopback_up()"


@pytest.fixture
def netns():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    name = "kvt-lo-" + uuid.uuid4().hex[:8]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _lo_up(netns):
    out = subprocess.run(["ip", "netns", "exec", netns, "ip", "-o", "link", "show", "lo"], check=True,
                         capture_output=True, text=True).stdout
    return "<LOOPBACK,UP," in out


def test_lo_comes_up_and_a_second_call_changes_nothing(netns):
    assert not _lo_up(netns)
    subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", SNIPPET], check=True)
    assert _lo_up(netns)


def test_a_missing_interface_is_an_error_naming_nothing_else(netns):
    done = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c",
                           "from kuasar_vmm_task.boot import loopback_up; loopback_up('nosuch0')"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "No such device" in done.stderr
