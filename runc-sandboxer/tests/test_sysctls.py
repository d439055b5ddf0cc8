"""Pod sysctls: only namespaced ones, never for a namespace the pod shares with the node."""
from __future__ import annotations

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_runc_sandboxer.sysctls import sysctl_files


def test_names_become_proc_sys_files() -> None:
    assert sysctl_files({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100",
                         "net/ipv4/conf/eth0.100/forwarding": "1", "kernel.sem": "250 32000 32 128"},
                        host_network=False, host_ipc=False) == {
        "/proc/sys/kernel/shm_rmid_forced": "1", "/proc/sys/fs/mqueue/msg_max": "100",
        "/proc/sys/net/ipv4/conf/eth0.100/forwarding": "1", "/proc/sys/kernel/sem": "250 32000 32 128"}
    assert sysctl_files({}, host_network=True, host_ipc=True) == {}


@pytest.mark.parametrize("sysctls, host_network, host_ipc, message", [
    ({"kernel.hostname": "x"}, False, False, "not namespaced"),
    ({"vm.overcommit_memory": "1"}, False, False, "not namespaced"),
    ({"net.core.somaxconn": "1"}, True, False, "host network"),
    ({"fs.mqueue.msg_max": "1"}, False, True, "host IPC"),
    ({"net/../kernel/x": "1"}, False, False, "invalid"),
    ({"net..ipv4": "1"}, False, False, "invalid"),
    ({"": "1"}, False, False, "invalid"),
    ({"net.ipv4.ip_forward": "1\n0"}, False, False, "one line"),
])
def test_refused(sysctls, host_network, host_ipc, message) -> None:
    with pytest.raises(InvalidArgument, match=message):
        sysctl_files(sysctls, host_network=host_network, host_ipc=host_ipc)
