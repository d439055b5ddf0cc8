"""StratoVirtVM: one StratoVirt process per pod, following upstream Kuasar's ``stratovirt/`` command line.

Kept from upstream: ``-name``, ``-uuid``, ``-machine``, ``-qmp unix:...,server,nowait``, ``-kernel``,
``-initrd``, ``-append`` (``console=hvc0 console=hvc1 iommu=off panic=1 pcie_ports=native`` first),
``-smp cpus=N``, ``-m NM``, ``-pidfile``, ``-D`` (debug), ``-global pcie-root-port.fast-unplug=1`` (not
microvm), ``-disable-seccomp``, ``-mem-prealloc``, pflash firmware; devices rng, virtio-serial + virtconsole,
the root image on virtio-blk, vhost-user-fs on ``<pod dir>/virtiofs.sock`` with tag ``kuasar``.
Different from upstream, because our guest agent and relay work that way: the agent channel is a
``virtserialport`` (``nr=1``, on a socket chardev ``<pod dir>/agent.sock``; StratoVirt cannot name ports, so
the guest agent takes the unnamed port 1) where upstream uses vhost-vsock; the console goes to
``<pod dir>/console.log`` (a file chardev on the virtconsole; on microvm, which allows one port, the legacy
serial with ``console=ttyS0``); NICs are taps by name; StratoVirt is not ``-daemonize``d (it is our child,
watched like QEMU, see :class:`~.process_vm.ProcessVM`). StratoVirt serves the socket chardev of
vhost-user-fs, so ``vhost_user_fs`` starts after it. Stop is QMP ``quit`` (upstream's), then SIGKILL.
"""
from __future__ import annotations

import logging
import uuid

from kuasar_shared.errors import Internal, Unavailable

from kuasar_vmm_sandboxer.devices import Device, Transport, render_all
from kuasar_vmm_sandboxer.hypervisors.stratovirt import devices as dev
from kuasar_vmm_sandboxer.hypervisors.stratovirt.config import StratoVirtConfig
from kuasar_vmm_sandboxer.process_vm import ProcessVM
from kuasar_vmm_sandboxer.qmp import Qmp
from kuasar_vmm_sandboxer.vm import Pids, VMSpec

__all__ = ["StratoVirtVM", "BASE_KERNEL_PARAMS", "AGENT_PORT_NR"]

log = logging.getLogger(__name__)
BASE_KERNEL_PARAMS = "console=hvc0 console=hvc1 iommu=off panic=1 pcie_ports=native"
#: the agent's virtserialport number (vmm-task's UNNAMED_AGENT_PORT)
AGENT_PORT_NR = 1
_UUID_NAMESPACE = uuid.UUID("6e7b0e90-3b2e-4179-bc30-43d2b5b5964f")


class StratoVirtVM(ProcessVM):
    """A pod VM on StratoVirt. Files in ``<pod dir>``: ``qmp.sock``, ``agent.sock``, ``console.log``,
    ``stratovirt.log``, ``virtiofs.sock``, ``sandbox-<id>.pid``, ``shared/``."""

    vmm_name = "StratoVirt"
    log_name = "stratovirt.log"

    def __init__(self, spec: VMSpec, config: StratoVirtConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.qmp = Qmp(self.path("qmp.sock"), "sandbox-" + spec.id)

    @property
    def agent_socket(self) -> str:
        return self.path("agent.sock")

    def kernel_params(self) -> str:
        cfg = self.config
        params = [BASE_KERNEL_PARAMS, "task.sharefs_type=virtiofs", "task.log_level=%s" % self.spec.log_level]
        if cfg.machine == "microvm":
            params.insert(1, "console=ttyS0")
        if cfg.kernel_params:
            params.append(cfg.kernel_params)
        if cfg.image_path:
            params.append("root=/dev/vda ro rootfstype=ext4")
        if self.spec.debug or cfg.debug:
            params.append("debug task.debug")
        return " ".join(params)

    def devices(self) -> list[Device]:
        """Every device in command-line order. :raise ValueError: more devices than PCI slots."""
        cfg, spec = self.config, self.spec
        transport = Transport.for_machine(cfg.machine_type)
        slots = dev.PciSlots(transport)
        virtio = transport.driver
        fs_chardev = "virtio-fs-%s" % spec.id
        devices: list[Device] = [
            dev.RngRandom(id="rng0", filename=cfg.entropy_source),
            dev.VirtioRng(virtio("virtio-rng"), rng="rng0", id="virtio-rng0", **slots.place()),
            dev.VirtioSerial(virtio("virtio-serial"), id="virtio-serial0", **slots.place()),
        ]
        if cfg.machine != "microvm":  # microvm allows one port: the agent's (console on the legacy serial)
            devices += [dev.ChardevFile(id="charconsole0", path=self.path("console.log")),
                        dev.VirtConsole(id="virtio-console0", chardev="charconsole0", nr=0)]
        devices += [
            dev.ChardevSocket(id="charagent0", path=self.agent_socket),
            dev.VirtSerialPort(id="virtio-agent0", chardev="charagent0", nr=AGENT_PORT_NR),
            dev.ChardevSocket(id=fs_chardev, path=self.path("virtiofs.sock")),
            dev.VhostUserFs(virtio("vhost-user-fs"), id="vhost-user-fs-%s" % spec.id, chardev=fs_chardev,
                            **slots.place()),
        ]
        if cfg.image_path:
            devices += [dev.Drive(id="rootfs", file=cfg.image_path, readonly=True),
                        dev.VirtioBlk(virtio("virtio-blk"), drive="rootfs", id="blk-0", **slots.place())]
        for i, nic in enumerate(spec.nics):
            devices += [dev.TapNetdev(id="net%d" % i, ifname=nic.tap),
                        dev.VirtioNet(virtio("virtio-net"), netdev="net%d" % i, id="virtio-net%d" % i, mac=nic.mac,
                                      **slots.place())]
        return devices

    def argv(self) -> list[str]:
        cfg, spec = self.config, self.spec
        argv = [cfg.path, "-name", "sandbox-" + spec.id, "-uuid", str(uuid.uuid5(_UUID_NAMESPACE, spec.id)),
                "-machine", cfg.machine_type, "-qmp", "unix:%s,server,nowait" % self.qmp.path,
                "-kernel", cfg.kernel_path]
        if cfg.initrd_path:
            argv += ["-initrd", cfg.initrd_path]
        argv += ["-append", self.kernel_params(), "-smp", "cpus=%d" % spec.vcpus, "-m", "%dM" % spec.memory_mb,
                 "-pidfile", self.path("sandbox-%s.pid" % spec.id)]
        if spec.debug or cfg.debug:
            argv += ["-D", self.path("sandbox-%s.log" % spec.id)]
        if cfg.machine != "microvm":
            argv += ["-global", "pcie-root-port.fast-unplug=1"]
        if cfg.machine == "microvm":
            argv += ["-serial", "file,path=%s" % self.path("console.log")]
        argv += ["-disable-seccomp"]
        if cfg.enable_mem_prealloc:
            argv += ["-mem-prealloc"]
        if cfg.firmware:
            argv += ["-drive", "file=%s,if=pflash,format=raw,unit=0,readonly=on" % cfg.firmware]
        return argv + render_all(self.devices())

    def virtiofsd_argv(self) -> list[str]:
        return [self.config.virtiofsd_conf.path, "-D", self.path("virtiofsd.log"),
                "-socket-path", self.path("virtiofs.sock"), "-source", self.shared_dir]

    async def start(self) -> int:
        try:
            argv = self.in_netns(self.argv())
        except ValueError as err:
            raise Internal("sandbox %s: %s" % (self.spec.id, err)) from err
        self.prepare(("qmp.sock", "agent.sock", "virtiofs.sock"))
        return await self.launch(argv, self._ready)

    async def _ready(self) -> None:
        """QMP answering, then vhost_user_fs connected to the socket StratoVirt serves."""
        await self.qmp.wait_ready(10.0, self.running)
        await self.start_virtiofsd(self.virtiofsd_argv(), self.path("virtiofs.sock"))

    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        """QMP ``quit`` (upstream's stop, graceful or not), then SIGKILL; vhost_user_fs after StratoVirt."""
        if self.pid and self.alive():
            try:
                await self.qmp.execute("quit", timeout=2.0)
            except (Unavailable, Internal) as err:
                log.debug("sandbox %s: QMP quit: %s", self.spec.id, err)
            if not await self.exited_within(timeout if not force else 3.0):
                log.warning("sandbox %s: StratoVirt pid %d ignored quit; killing it", self.spec.id, self.pid)
        await self.kill()

    async def pids(self) -> Pids:
        vcpus: tuple[int, ...] = ()
        try:
            cpus = await self.qmp.execute("query-cpus", timeout=2.0)  # StratoVirt's CpuInfo: "thread_id"
            vcpus = tuple(int(c["thread_id"]) for c in cpus if "thread_id" in c)
        except (Unavailable, Internal) as err:
            log.debug("sandbox %s: no vCPU threads: %s", self.spec.id, err)
        return Pids(self.pid, vcpus, self.affiliated())

    async def ping(self) -> None:
        await self.qmp.execute("query-status", timeout=2.0)

