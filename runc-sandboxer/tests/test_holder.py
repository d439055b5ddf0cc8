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


def _spare_holders(helper: int) -> list[int]:
    """Holders the helper made ahead of need: its children still named like it, PID 1 of a namespace."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as handle:
                status = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if (int(status["PPid"]) == helper and status["Name"].strip() == "sandbox-parent"
                and status["NSpid"].split()[-1] == "1"):
            found.append(int(entry))
    return found


@pytest.mark.asyncio
async def test_holders_are_made_ahead_of_need_and_a_dead_spare_is_replaced(holders) -> None:
    pid = await holders.spawn("holder-first", "", "first")
    await asyncio.sleep(0.2)
    spares = _spare_holders(holders.pid)
    assert len(spares) == 1
    os.kill(spares[0], signal.SIGKILL)
    await asyncio.sleep(0.1)
    second = await holders.spawn("holder-second", "", "second")
    host_ipc = await holders.spawn("holder-host-ipc", "", "third", host_ipc=True)
    try:
        assert second != spares[0]
        assert os.readlink(f"/proc/{host_ipc}/ns/ipc") == os.readlink("/proc/self/ns/ipc")
        for holder in (pid, second):
            assert os.readlink(f"/proc/{holder}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
            with open(f"/proc/{holder}/cmdline", "rb") as handle:
                assert handle.read().startswith(b"[sandbox-holder-")  # the pause program runs
        await asyncio.sleep(0.2)
        assert len(_spare_holders(holders.pid)) == 1
    finally:
        for holder in (pid, second, host_ipc):
            os.kill(holder, signal.SIGKILL)
        for holder in (pid, second, host_ipc):
            await asyncio.wait_for(wait_exit(holder), 5)
