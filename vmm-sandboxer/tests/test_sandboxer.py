"""VmmSandboxer beyond the conformance suite, on each backend's fake binary: the restart promise (a new
sandboxer re-adopts a running pod: same VMM, relay re-attached over the backend's agent channel, guest
answering) and a VMM that dies under a ready pod (stopped with its status, its VM cleaned up); plus every
Hooks method called at its point."""
from __future__ import annotations

import asyncio
import os
import signal
from typing import Callable, Optional

import pytest

from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_vmm_sandboxer import config, hypervisors
from kuasar_vmm_sandboxer.main import RELAY
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer
from kuasar_vmm_sandboxer.vm import VM, PodResourceHooks, VMFactory, VMSpec

BACKENDS = ["qemu", "stratovirt", "cloud-hypervisor"]


@pytest.fixture
def make_sandboxer(fake_factory: Callable[[config.HypervisorConfig], VMFactory]):
    """``make(cfg, relay, hooks=None)``: a VmmSandboxer on ``cfg``'s fake hypervisor."""
    def make(cfg: config.VmmConfig, relay: TaskServer, hooks: Optional[PodResourceHooks] = None) -> VmmSandboxer:
        hooks = hooks or hypervisors.backend(cfg.hypervisor.type).hooks()
        return VmmSandboxer(relay.directory, cfg, fake_factory(cfg.hypervisor), hooks, relay)
    return make


def _request(sandbox_id: str) -> CreateSandbox:
    return CreateSandbox(id=sandbox_id, config={"metadata": {"name": sandbox_id},
                                                "linux": {"resources": {"cpu_quota": 150000, "cpu_period": 100000}}})


@pytest.mark.parametrize("hypervisor", BACKENDS)
async def test_a_restarted_sandboxer_readopts_the_running_pod(make_sandboxer, hypervisor: str, relay: TaskServer,
                                                              fake_hypervisor: Callable[[str], config.VmmConfig]):
    cfg = fake_hypervisor(hypervisor)
    first = make_sandboxer(cfg, relay)
    await first.recover()
    await first.create(_request("p1"))
    started = await first.start("p1")
    assert started.ready and started.info["vcpus"] == "2" and started.info["hypervisor"] == hypervisor
    await first.close()  # the VMM, virtiofsd and the relay keep running
    second = make_sandboxer(cfg, await TaskServer.ensure(relay.directory, RELAY))
    try:
        await second.recover()
        status = await second.status("p1")
        assert status.ready and status.pid == started.pid
        await second.guest("p1").check(3.0)
        await second.shutdown("p1")
        assert not os.path.exists("/proc/%d" % started.pid) or _is_zombie(started.pid)
    finally:
        await second.close()


async def test_recovery_readopts_live_pods_and_cleans_up_a_dead_one(make_sandboxer, relay: TaskServer,
                                                                  fake_hypervisor):
    """Pods are re-attached together: one whose VMM died meanwhile is removed, the others are adopted."""
    cfg = fake_hypervisor("qemu")
    first = make_sandboxer(cfg, relay)
    await first.recover()
    pids = {}
    for pod in ("r1", "r2", "r3"):
        await first.create(_request(pod))
        pids[pod] = (await first.start(pod)).pid
    await first.close()
    os.kill(pids["r2"], signal.SIGKILL)
    second = make_sandboxer(cfg, await TaskServer.ensure(relay.directory, RELAY))
    try:
        await second.recover()
        assert [(await second.status(pod)).pid for pod in ("r1", "r3")] == [pids["r1"], pids["r3"]]
        assert "r2" not in second.pods
        for pod in ("r1", "r3"):
            await second.guest(pod).check(3.0)
            await second.shutdown(pod)
    finally:
        await second.close()


@pytest.mark.parametrize("hypervisor", BACKENDS)
async def test_a_dead_vmm_stops_the_pod(make_sandboxer, hypervisor: str, relay: TaskServer,
                                        fake_hypervisor: Callable[[str], config.VmmConfig]):
    sandboxer = make_sandboxer(fake_hypervisor(hypervisor), relay)
    await sandboxer.recover()
    try:
        await sandboxer.create(_request("p2"))
        started = await sandboxer.start("p2")
        os.kill(started.pid, signal.SIGKILL)
        exited = await asyncio.wait_for(sandboxer.wait("p2"), 10)
        assert exited.exit_status != 0 and not (await sandboxer.status("p2")).ready
        await sandboxer.shutdown("p2")
    finally:
        await sandboxer.close()


class RecordingHooks(PodResourceHooks):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def post_create(self, spec: VMSpec, pod_config):  # type: ignore[no-untyped-def]
        self.calls.append("post_create")
        return super().post_create(spec, pod_config)

    async def pre_start(self, spec: VMSpec) -> VMSpec:
        self.calls.append("pre_start")
        return spec

    async def post_start(self, vm: VM, guest) -> None:  # type: ignore[no-untyped-def]
        self.calls.append("post_start")
        await super().post_start(vm, guest)

    async def pre_stop(self, vm: VM) -> None:
        self.calls.append("pre_stop")

    async def post_stop(self, vm: VM) -> None:
        self.calls.append("post_stop")


async def test_every_hook_is_called_at_its_point(make_sandboxer, relay: TaskServer, fake_hypervisor):
    hooks = RecordingHooks()
    sandboxer = make_sandboxer(fake_hypervisor("qemu"), relay, hooks)
    await sandboxer.recover()
    try:
        await sandboxer.create(_request("p3"))
        assert hooks.calls == ["post_create"]
        await sandboxer.start("p3")
        assert hooks.calls == ["post_create", "pre_start", "post_start"]
        await sandboxer.stop("p3", None)
        assert hooks.calls[3:] == ["pre_stop", "post_stop"]
        await sandboxer.shutdown("p3")
    finally:
        await sandboxer.close()


def _is_zombie(pid: int) -> bool:
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
