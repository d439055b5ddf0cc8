"""The [sandbox-parent] helper and the namespace holders it forks."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.process_identity import start_time, wait_exit


@pytest.mark.asyncio
async def test_holder_owns_new_ipc_uts_pid_namespaces_with_hostname(holders) -> None:
    pid = await holders.spawn("holder-test", "", "holder-host")
    try:
        for ns in ("ipc", "uts", "pid"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        hostname = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert hostname == "holder-host"
        with open(f"/proc/{pid}/status") as handle:
            nspid = [line.split() for line in handle if line.startswith("NSpid:")][0]
        assert nspid[-1] == "1"  # PID 1 of its own PID namespace
        os.kill(pid, signal.SIGTERM)  # ignored from outside the namespace
        await asyncio.sleep(0.1)
        assert start_time(pid) is not None
    finally:
        os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(pid), 5)


@pytest.mark.asyncio
async def test_bad_netns_is_reported_and_helper_keeps_serving(holders, tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="No such file"):
        await holders.spawn("holder-bad", str(tmp_path / "missing"), "")
    pid = await holders.spawn("holder-ok", "", "")
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(pid), 5)
