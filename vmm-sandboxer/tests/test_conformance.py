"""The shared Sandbox API conformance suite against VmmSandboxer, each backend on a fake of its binary.

The fakes (``fakes/``) check the command line the backend builds the way the hypervisor would refuse
it, serve its control API (QMP, or Cloud Hypervisor's REST API) and run vmm-task's real SandboxService on
the agent channel, so the whole pod lifecycle (cgroup, relay attach, Check, SetupSandbox, clock sync,
stop through the control channel, exit watch) runs without a VM. QEMU also runs for real in
``hypervisors/qemu/test_vm.py`` and ``tests/e2e``; StratoVirt and Cloud Hypervisor run only here.
"""
from __future__ import annotations

import os
import signal
import stat
import sys
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kuasar_shared.sandbox.taskserver import TaskServer
from kuasar_shared.testing.conformance import SandboxerConformance
from kuasar_vmm_sandboxer import config, hypervisors
from kuasar_vmm_sandboxer.main import RELAY
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer

FAKES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fakes")


def fake_binary(directory: str, name: str) -> str:
    """An executable ``directory/name`` that execs the fake (so the VMM pid is the fake's)."""
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, os.path.join(FAKES, "fake_%s.py" % name)))
    os.chmod(path, stat.S_IRWXU)
    return path


def fake_config(directory: str, hypervisor: str) -> config.VmmConfig:
    """The shipped config of ``hypervisor`` pointed at the fake binary and stand-in guest files."""
    shipped = os.path.join(os.path.dirname(FAKES), "..", "config_%s.toml" % {"qemu": "qemu", "stratovirt": "stratovirt",
                                                                          "cloud-hypervisor": "clh"}[hypervisor])
    cfg = config.load(shipped)
    hv = cfg.hypervisor
    for name in ("vmlinux.bin", "kuasar.initrd", "kuasar.img"):
        open(os.path.join(directory, name), "w").close()
    hv.kernel_path = os.path.join(directory, "vmlinux.bin")
    hv.initrd_path = os.path.join(directory, "kuasar.initrd") if hv.initrd_path else ""
    hv.image_path = os.path.join(directory, "kuasar.img") if hv.image_path else ""
    hv.boot_timeout_secs = 10
    cfg.sandbox.containerd_ttrpc_address = ""
    return cfg


def point_at_fakes(cfg: config.VmmConfig, directory: str) -> None:
    hv = cfg.hypervisor
    if hv.type == "qemu":
        hv.qemu_path = fake_binary(directory, "qemu")  # type: ignore[attr-defined]
        hv.use_vsock = False  # type: ignore[attr-defined]
    elif hv.type == "stratovirt":
        hv.path = fake_binary(directory, "stratovirt")  # type: ignore[attr-defined]
        hv.virtiofsd_conf.path = fake_binary(directory, "virtiofsd")  # type: ignore[attr-defined]
    else:
        hv.path = fake_binary(directory, "cloud_hypervisor")  # type: ignore[attr-defined]
        hv.virtiofsd.path = fake_binary(directory, "virtiofsd")  # type: ignore[attr-defined]


@pytest.fixture
def relay_dir(short_tmp: str) -> str:
    directory = os.path.join(short_tmp, "vmm")
    os.makedirs(directory)
    return directory


@pytest_asyncio.fixture
async def relay(relay_dir: str) -> AsyncIterator[TaskServer]:
    server = await TaskServer.ensure(relay_dir, RELAY)
    yield server
    await server.close()
    try:
        os.kill(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class VmmConformance(SandboxerConformance):
    sandboxer_name = "vmm"
    hypervisor = ""

    @pytest.fixture
    def cfg(self, short_tmp: str) -> Iterator[config.VmmConfig]:
        cfg = fake_config(short_tmp, self.hypervisor)
        point_at_fakes(cfg, short_tmp)
        yield cfg

    @pytest_asyncio.fixture
    async def sandboxer(self, cfg: config.VmmConfig, relay: TaskServer) -> VmmSandboxer:
        backend = hypervisors.backends()[cfg.hypervisor.type]
        return VmmSandboxer(relay.directory, cfg, backend.factory(cfg.hypervisor), backend.hooks(), relay)


class TestQemuConformance(VmmConformance):
    hypervisor = "qemu"
