"""QemuVM against real QEMU (TCG): start + QMP, vCPU threads, graceful/forced stop, kill -9
seen by the exit watch. The guest image comes from vmm-task/build-image.sh (cached); the guest agent
is needed only by the microvm test, which boots to it."""
from __future__ import annotations

import asyncio
import os
import re
import signal

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import Internal
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.template import agent_session
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import VMSpec
from kuasar_vmm_task.image.build import build, default_outdir

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
IMAGE_DIR = default_outdir()


@pytest.fixture(scope="session")
def hv_config():
    """The shipped config as the factory resolves it (accel decided), booting the current guest image."""
    build(IMAGE_DIR, os.path.join(IMAGE_DIR, ".cache"))
    cfg = config.load(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")).hypervisor
    cfg.memory_in_mb = 256
    cfg.kernel_path, cfg.initrd_path = os.path.join(IMAGE_DIR, "vmlinux.bin"), os.path.join(IMAGE_DIR, "kuasar.initrd")
    return QemuFactory(cfg).config


async def test_lifecycle_qmp_stop(hv_config, short_tmp):
    vm = QemuVM(VMSpec("t1", short_tmp, 1, 256), hv_config)
    pid = await vm.start()
    try:
        assert vm.alive() and os.path.exists(vm.agent_socket)
        await vm.ping()
        pids = await vm.pids()
        assert pids.vmm == pid and len(pids.vcpus) == 1
        again = await QemuFactory(hv_config).recover(VMSpec("t1", short_tmp, 1, 256), vm.record())
        await again.ping()
    finally:
        await vm.stop(force=True)
    assert not vm.alive()
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
    cfg = QemuConfig(**{**hv_config.__dict__, "kernel_path": os.path.join(short_tmp, "missing")})
    vm = QemuVM(VMSpec("t3", short_tmp, 1, 256), cfg)
    with pytest.raises(Internal, match="QEMU"):
        await vm.start()
    assert not vm.alive()


async def test_microvm_boots_to_the_agent_over_virtio_mmio(hv_config, short_tmp):
    """machine_type microvm under TCG: the argv QemuVM generates boots Debian's generic kernel to
    vmm-task, which answers Check over virtio-serial on virtio-mmio and has the 9p share mounted."""
    cfg = QemuConfig(**{**hv_config.__dict__, "machine_type": "microvm", "accel": "tcg"})
    vm = QemuVM(VMSpec("t4", short_tmp, 1, 256), cfg)
    assert "tsc_early_khz=" in vm.kernel_params()
    os.makedirs(vm.shared_dir)
    with open(os.path.join(vm.shared_dir, "marker"), "w") as f:
        f.write("from-the-host\n")
    started = asyncio.get_running_loop().time()
    await vm.start()
    mux = None
    try:
        mux = MuxConnection(*(await asyncio.open_unix_connection(vm.agent_socket)), is_host=True)
        client = Client(*(await mux.open()))
        try:
            await client.call("grpc.SandboxService", "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty,
                              timeout=120)
        except Exception:
            with open(vm.path("console.log"), errors="replace") as f:
                print(f.read()[-4000:])
            raise
        boot = asyncio.get_running_loop().time() - started
        resp = await client.call("grpc.SandboxService", "ExecVMProcess", sandbox_pb2.ExecVMProcessRequest(
            command="ls /sys/bus/platform/drivers/virtio-mmio | grep -c LNRO0005; cat /run/kuasar/state/marker; "
                    "grep -c ' 9p kuasar ' /proc/self/mountinfo"),
            sandbox_pb2.ExecVMProcessResponse, timeout=60)
        count, marker, mounts = resp.out.split()
        # rng, serial and 9p: virtio-mmio devices described by ACPI (LNRO0005)
        assert int(count) == 3 and marker == "from-the-host" and mounts == "1"
        print(f"microvm boot-to-agent {boot:.2f}s")
        await client.close()
    finally:
        if mux is not None:
            await mux.close()
        await vm.stop(force=True)
    assert not vm.alive()


async def _boot_to_check(cfg: QemuConfig, pod_dir: str) -> str:
    """Boot ``cfg``'s VM to its agent's Check; its console log."""
    os.makedirs(pod_dir)
    vm = QemuVM(VMSpec("t5", pod_dir, 1, 256), cfg)
    await vm.start()
    try:
        async with agent_session(vm.agent_socket, 120, vm):
            pass
    finally:
        await vm.stop(force=True)
    with open(vm.path("console.log"), errors="replace") as f:
        return f.read()


async def test_both_guest_kernels_boot_to_the_agent(hv_config, short_tmp, tmp_path):
    """The default image's own kernel has its drivers built in (the agent loads no module); an image built with
    ``--kernel debian`` boots Debian's generic kernel, whose virtio, 9p and vsock modules the agent loads."""
    own = await _boot_to_check(hv_config, os.path.join(short_tmp, "own"))
    assert "0 kernel modules loaded" in own
    debian_dir = str(tmp_path / "debian-image")
    record = build(debian_dir, os.path.join(IMAGE_DIR, ".cache"), kernel_kind="debian")
    assert record["kernel"] == "debian"
    cfg = QemuConfig(**{**hv_config.__dict__, "kernel_path": os.path.join(debian_dir, "vmlinux.bin"),
                        "initrd_path": os.path.join(debian_dir, "kuasar.initrd")})
    console = await _boot_to_check(cfg, os.path.join(short_tmp, "debian"))
    loaded = re.search(r"(\d+) kernel modules loaded", console)
    assert loaded and int(loaded.group(1)) >= 10, console[-3000:]
