"""QemuVM against real QEMU (TCG): start + QMP, vCPU threads, hot-plug, graceful/forced stop, kill -9
seen by the exit watch. The guest image comes from vmm-task/build-image.sh (cached); the guest agent
is not needed here."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess

import pytest

from kuasar_shared.errors import Internal
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu import devices as dev
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import VMSpec

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
IMAGE_DIR = "/var/lib/kuasar"


@pytest.fixture(scope="session")
def hv_config():
    if not os.path.exists(os.path.join(IMAGE_DIR, "vmlinux.bin")):
        subprocess.run([os.path.join(REPO, "vmm-task", "build-image.sh"), IMAGE_DIR], check=True)
    cfg = config.load(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")).hypervisor
    cfg.memory_in_mb = 256
    return cfg


async def test_lifecycle_qmp_hotplug_stop(hv_config, short_tmp):
    vm = QemuVM(VMSpec("t1", short_tmp, 1, 256), hv_config)
    pid = await vm.start()
    try:
        assert vm._alive() and os.path.exists(vm.agent_socket)
        await vm.ping()
        pids = await vm.pids()
        assert pids.vmm == pid and len(pids.vcpus) == 1
        await vm.hot_attach(dev.VirtioBlk(driver="virtio-rng-pci", drive="", id="hprng", bus="rp0"))
        await vm.hot_detach("hprng")
        with pytest.raises(Internal):
            await vm.hot_attach(dev.VirtioRng(driver="no-such-device", id="x"))
        again = await QemuFactory(hv_config).recover(VMSpec("t1", short_tmp, 1, 256), vm.record())
        await again.ping()
    finally:
        await vm.stop(force=True)
    assert not vm._alive()
    await vm.stop(force=True)  # idempotent


async def test_kill_9_fires_the_watch(hv_config, short_tmp):
    vm = QemuVM(VMSpec("t2", short_tmp, 1, 256), hv_config)
    await vm.start()
    fired: asyncio.Future = asyncio.get_running_loop().create_future()
    vm.watch(lambda code: fired.set_result(code))
    os.kill(vm.pid, signal.SIGKILL)
    assert await asyncio.wait_for(fired, 10) == 128 + signal.SIGKILL
    await vm.stop(force=True)


async def test_start_failure_names_qemu_output(hv_config, short_tmp):
    cfg = config.HypervisorConfig(**{**hv_config.__dict__, "kernel_path": os.path.join(short_tmp, "missing")})
    vm = QemuVM(VMSpec("t3", short_tmp, 1, 256), cfg)
    with pytest.raises(Internal, match="QEMU"):
        await vm.start()
    assert not vm._alive()
