"""CloudHypervisorVM: one cloud-hypervisor process per pod, booted from its command line as upstream
Kuasar's ``cloud_hypervisor/`` does (``--api-socket``, ``--cpus boot=N``, ``--memory size=<bytes>,shared=on,
hugepages=off``, ``--kernel``, ``--cmdline``, devices ``--pmem`` (root image) or ``--initramfs``, ``--rng``,
``--vsock cid=3,socket=<pod dir>/task.vsock``, ``--console file=``, ``--fs tag=kuasar``, ``--net``, ``-vv``
with debug). The guest agent is reached over hybrid vsock (``hvsock://<pod dir>/task.vsock:1024``, upstream's
address); virtiofsd (which serves the socket) starts first. The REST API (:mod:`.client`) answers ping;
stop is ``vm.shutdown`` + ``vmm.shutdown`` unless forced (upstream sends SIGTERM), then SIGKILL. vCPU
threads are the VMM's threads named ``vcpu<N>`` (Cloud Hypervisor has no API for them).
"""
from __future__ import annotations

import asyncio
import logging
import os

from kuasar_shared.errors import Internal, Unavailable

from kuasar_vmm_sandboxer.devices import Device, render_all
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor import devices as dev
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.client import ChClient
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.config import CloudHypervisorConfig
from kuasar_vmm_sandboxer.process_vm import ProcessVM
from kuasar_vmm_sandboxer.relay.names import HVSOCK
from kuasar_vmm_sandboxer.vm import Pids, VMSpec

__all__ = ["CloudHypervisorVM", "BASE_KERNEL_PARAMS", "ROOTFS_KERNEL_PARAMS", "AGENT_VSOCK_PORT"]

log = logging.getLogger(__name__)
BASE_KERNEL_PARAMS = "console=hvc0"
ROOTFS_KERNEL_PARAMS = "root=/dev/pmem0p1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
AGENT_VSOCK_PORT = 1024
_READY_TIMEOUT = 10.0


class CloudHypervisorVM(ProcessVM):
    """A pod VM on Cloud Hypervisor. Files in ``<pod dir>``: ``api.sock``, ``task.vsock``, ``console.log``,
    ``cloud-hypervisor.log``, ``virtiofs.sock``, ``shared/``."""

    vmm_name = "cloud-hypervisor"
    log_name = "cloud-hypervisor.log"

    def __init__(self, spec: VMSpec, config: CloudHypervisorConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.api = ChClient(self.path("api.sock"))

    @property
    def agent_address(self) -> str:
        return "%s%s:%d" % (HVSOCK, self.path("task.vsock"), AGENT_VSOCK_PORT)

    def kernel_params(self) -> str:
        cfg = self.config
        params = [BASE_KERNEL_PARAMS]
        if cfg.image_path:
            params.append(ROOTFS_KERNEL_PARAMS)
        params.append("task.sharefs_type=virtiofs")
        if cfg.kernel_params:
            params.append(cfg.kernel_params)
        params.append("task.log_level=%s" % ("debug" if cfg.task.debug else self.spec.log_level))
        if self.spec.debug or cfg.debug:
            params.append("task.debug")
        params.append("task.enable_tracing=%s" % str(cfg.task.enable_tracing).lower())
        return " ".join(params)

    def devices(self) -> list[Device]:
        cfg, spec = self.config, self.spec
        devices: list[Device] = []
        if cfg.image_path:
            devices.append(dev.Pmem(id="rootfs", file=cfg.image_path, discard_writes=True))
        if cfg.entropy_source:
            devices.append(dev.Rng(src=cfg.entropy_source))
        devices += [dev.Vsock(cid=3, socket=self.path("task.vsock"), id="vsock"),
                    dev.Console(file=self.path("console.log")),
                    dev.Fs(tag="kuasar", socket=self.path("virtiofs.sock"), id="fs")]
        devices += [dev.Net(id="net%d" % i, tap=nic.tap, mac=nic.mac) for i, nic in enumerate(spec.nics)]
        return devices

    def argv(self) -> list[str]:
        cfg, spec = self.config, self.spec
        argv = [cfg.path, "--api-socket", self.api.path, "--cpus", "boot=%d" % spec.vcpus,
                "--memory", "size=%d,shared=on,hugepages=%s" % (spec.memory_mb << 20, "on" if cfg.hugepages else "off"),
                "--kernel", cfg.kernel_path, "--cmdline", self.kernel_params()]
        if cfg.initrd_path:
            argv += ["--initramfs", cfg.initrd_path]
        argv += render_all(self.devices())
        if cfg.debug:
            argv.append("-vv")
        return argv

    def virtiofsd_argv(self) -> list[str]:
        v = self.config.virtiofsd
        argv = [v.path, "--log-level", v.log_level, "--cache", v.cache, "--thread-pool-size", str(v.thread_pool_size),
                "--socket-path", self.path("virtiofs.sock"), "--shared-dir", self.shared_dir]
        return argv + (["--syslog"] if v.syslog else [])

    async def start(self) -> int:
        argv = self.in_netns(self.argv())
        self.prepare(("api.sock", "task.vsock", "virtiofs.sock"))
        await self.start_virtiofsd(self.virtiofsd_argv(), self.path("virtiofs.sock"))
        return await self.launch(argv, self._wait_api)

    async def _wait_api(self) -> None:
        """Until ``vmm.ping`` answers. :raise Unavailable: not within 10 s, or the process died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _READY_TIMEOUT
        while True:
            try:
                await self.api.request("GET", "vmm.ping", timeout=2.0)
                return
            except Unavailable:
                if not self.running():
                    raise Unavailable("cloud-hypervisor exited during start-up") from None
                if loop.time() > deadline:
                    raise
            await asyncio.sleep(0.01)

    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        """``vm.shutdown`` then ``vmm.shutdown`` unless ``force``; SIGKILL if it is still there."""
        if self.pid and self.alive() and not force:
            for endpoint in ("vm.shutdown", "vmm.shutdown"):
                try:
                    await self.api.request("PUT", endpoint, timeout=2.0)
                except (Unavailable, Internal) as err:
                    log.debug("sandbox %s: %s: %s", self.spec.id, endpoint, err)
            if not await self.exited_within(timeout):
                log.warning("sandbox %s: cloud-hypervisor pid %d did not shut down; killing it",
                            self.spec.id, self.pid)
        await self.kill()

    async def pids(self) -> Pids:
        vcpus: list[int] = []
        try:
            for tid in os.listdir("/proc/%d/task" % self.pid):
                with open("/proc/%d/task/%s/comm" % (self.pid, tid)) as f:
                    if f.read().startswith("vcpu"):
                        vcpus.append(int(tid))
        except OSError as err:
            log.debug("sandbox %s: no vCPU threads: %s", self.spec.id, err)
        return Pids(self.pid, tuple(sorted(vcpus)), self.affiliated())

    async def ping(self) -> None:
        await self.api.request("GET", "vmm.ping", timeout=2.0)
