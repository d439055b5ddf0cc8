"""The shared Sandbox API conformance suite against VmmSandboxer, each backend on a fake of its binary.

The fakes (``fakes/``) check the command line the backend builds the way the hypervisor would refuse
it, serve its control API (QMP, or Cloud Hypervisor's REST API) and run vmm-task's real SandboxService on
the agent channel (the virtio-serial mux, or hybrid vsock for Cloud Hypervisor), so the whole pod
lifecycle (cgroup, relay attach, Check, SetupSandbox, clock sync, stop through the control channel,
exit watch) runs without a VM. QEMU also runs for real in ``hypervisors/qemu/test_vm.py`` and
``tests/e2e``; StratoVirt and Cloud Hypervisor run only here and in ``hypervisors/*/test_vm.py``.
"""
from __future__ import annotations

from typing import Callable

import pytest_asyncio

from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_shared.testing.conformance import SandboxerConformance
from kuasar_vmm_sandboxer import config, hypervisors
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer
from kuasar_vmm_sandboxer.vm import VMFactory


class VmmConformance(SandboxerConformance):
    sandboxer_name = "vmm"
    hypervisor = ""

    @pytest_asyncio.fixture
    async def sandboxer(self, fake_hypervisor: Callable[[str], config.VmmConfig],
                        fake_factory: Callable[[config.HypervisorConfig], VMFactory],
                        relay: TaskServer) -> VmmSandboxer:
        cfg = fake_hypervisor(self.hypervisor)
        hooks = hypervisors.backend(cfg.hypervisor.type).hooks()
        return VmmSandboxer(relay.directory, cfg, fake_factory(cfg.hypervisor), hooks, relay)


class TestQemuConformance(VmmConformance):
    hypervisor = "qemu"


class TestStratoVirtConformance(VmmConformance):
    hypervisor = "stratovirt"


class TestCloudHypervisorConformance(VmmConformance):
    hypervisor = "cloud-hypervisor"
