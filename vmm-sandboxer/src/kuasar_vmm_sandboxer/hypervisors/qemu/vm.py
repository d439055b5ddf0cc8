"""QemuVM: one QEMU process per pod, started inside the pod's network namespace.

The command line is data (:meth:`QemuVM.devices` + :meth:`QemuVM.argv`), tested against expected argv.
QEMU is spawned as our child (:class:`~kuasar_vmm_sandboxer.process_vm.ProcessVM`); virtiofsd, when the
share is virtio-fs, is spawned the same way first. Stop is graceful (``system_powerdown``) unless
forced, then QMP ``quit``, then SIGKILL; helpers are killed after QEMU is gone.

With a :class:`RamFile` the guest RAM is a file: a template VM writes it (``share=on``) and boots with
``task.template``; a pod VM restored from a template maps it copy-on-write and loads the template's
device state (``-incoming defer``, then QMP with ``x-ignore-shared``: QEMU 7.2 takes that capability
over QMP only). Its share, agent socket and taps are its own; the device set is the template's.
"""
from __future__ import annotations

import asyncio
import logging
import shlex
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from kuasar_shared.errors import Internal, Unavailable

from kuasar_vmm_sandboxer.config import SHARE_VIRTIOFS
from kuasar_vmm_sandboxer.devices import Device, Transport, render_all
from kuasar_vmm_sandboxer.hypervisors.qemu import devices as dev
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.tsc import host_tsc_khz
from kuasar_vmm_sandboxer.process_vm import ProcessVM
from kuasar_vmm_sandboxer.qmp import Qmp
from kuasar_vmm_sandboxer.vm import Pids, VMSpec

__all__ = ["QemuVM", "RamFile", "RamSource", "WarmSource", "AGENT_PORT_NAME", "BASE_KERNEL_PARAMS"]

log = logging.getLogger(__name__)

#: the virtio-serial port the guest agent opens (contract with vmm-task)
AGENT_PORT_NAME = "kuasar.agent"
#: fast, quiet boot of a generic kernel on a serial console. The crypto self-tests are skipped: under TCG
#: they were the two slowest initcalls of Debian's kernel (crypto_algapi_init's algorithm tests ~0.22 s,
#: crypto_kdf108_init, which only tests the SP800-108 KDF, ~0.27 s: ~0.4 s of boot-to-agent)
BASE_KERNEL_PARAMS = ("console=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check noreplace-smp "
                      "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd rcupdate.rcu_expedited=1 random.trust_cpu=on "
                      "cryptomgr.notests initcall_blacklist=crypto_kdf108_init")


@dataclass(frozen=True)
class RamFile:
    """Guest RAM in ``path``: written by a template (``incoming`` ""), or mapped copy-on-write by a VM
    that restores the device state file ``incoming`` (a template's ``state``)."""

    path: str
    incoming: str = ""
    #: the template's digest (in the pod's record and log)
    template: str = ""

    @property
    def share(self) -> bool:
        return not self.incoming


#: decides at start whether a pod VM restores from a template (its RamFile) or boots cold (None)
RamSource = Callable[[VMSpec], Awaitable[Optional[RamFile]]]
#: a warm VM of the spec's class, its files moved to the spec's pod directory, or None
WarmSource = Callable[[VMSpec], Awaitable[Optional["QemuVM"]]]


class QemuVM(ProcessVM):
    """A pod VM on QEMU. Files live in ``<pod dir>``: ``qmp.sock``, ``agent.sock``, ``console.log``,
    ``qemu.log``, ``virtiofs.sock``, ``shared/`` (the share)."""

    vmm_name = "QEMU"
    log_name = "qemu.log"

    def __init__(self, spec: VMSpec, config: QemuConfig, ram: Optional[RamFile] = None,
                 ram_source: Optional[RamSource] = None, warm_source: Optional[WarmSource] = None) -> None:
        """``ram``: a template's RAM file (set for a template VM, or for a restore decided already);
        ``ram_source`` decides it in :meth:`start` (the factory's templates); ``warm_source`` may hand
        :meth:`start` a warm VM to take over instead (the factory's pool)."""
        super().__init__(spec)
        self.config = config
        self.ram = ram
        self.ram_source = ram_source
        self.warm_source = warm_source
        #: the digest of the template this VM was restored from ("" for a cold boot)
        self.template = ""
        #: restored ahead of its pod by the warm pool
        self.warm = False
        #: spawn QEMU in a new network namespace of its own (a warm VM's taps wait there for their pod's)
        self.own_netns = False
        self.qmp = Qmp(self.path("qmp.sock"), "sandbox-" + spec.id)

    @property
    def agent_socket(self) -> str:
        return self.path("agent.sock")

    def in_netns(self, argv: list[str]) -> list[str]:
        if self.own_netns:
            return ["unshare", "--net", "--"] + argv
        return super().in_netns(argv)

    # --- command line ----------------------------------------------------------------------
    def kernel_params(self) -> str:
        """:raise FailedPrecondition: microvm under TCG, and the host's TSC rate is unknown."""
        cfg = self.config
        share = "virtiofs" if cfg.share_fs == SHARE_VIRTIOFS else "9p"
        params = [BASE_KERNEL_PARAMS, "task.sharefs_type=%s" % share, "task.log_level=%s" % self.spec.log_level]
        if self.spec.debug or cfg.debug:
            params.append("task.debug")
        else:  # the kernel's errors only: under TCG each line to the emulated UART costs (~0.2 s of a boot)
            params.insert(1, "quiet")
        if self.ram is not None:
            params.append("task.template")
        if cfg.image_path:
            params.append("root=/dev/vda ro rootfstype=ext4")
        if cfg.machine_type == "microvm" and cfg.accel == "tcg" and "tsc_early_khz=" not in cfg.kernel_params:
            params.append("tsc_early_khz=%d" % host_tsc_khz())  # microvm has no clock to calibrate against
        if cfg.kernel_params:
            params.append(cfg.kernel_params)
        return " ".join(params)

    def devices(self) -> list[Device]:
        """Every device of the VM in command-line order."""
        cfg, spec = self.config, self.spec
        tr = Transport.for_machine(cfg.machine_type)
        virtiofs = cfg.share_fs == SHARE_VIRTIOFS
        devices: list[Device] = [
            dev.Machine(type=cfg.machine_type, memory_backend="mem0" if virtiofs or self.ram else None,
                        extra=cfg.machine_accelerators),
            dev.Accel(type=cfg.accel, tb_size=cfg.tcg_tb_size_mb if cfg.accel == "tcg" else None),
        ]
        if self.ram is not None:
            devices.append(dev.MemoryBackendFile(id="mem0", size="%dM" % spec.memory_mb, mem_path=self.ram.path,
                                                 share=self.ram.share))
            if cfg.machine_type != "microvm":  # vmgenid needs the ACPI tables of q35/pc
                devices.append(dev.VmGenId())
        elif virtiofs:
            devices.append(dev.MemoryBackendMemfd(id="mem0", size="%dM" % spec.memory_mb))
        devices += [
            dev.RngRandom(id="rng0", filename=cfg.entropy_source),
            dev.VirtioRng(driver=tr.driver("virtio-rng"), rng="rng0", id="rng"),
        ]
        if cfg.vsock:
            devices.append(dev.VhostVsock(driver=tr.driver("vhost-vsock"), guest_cid=_guest_cid(spec.id)))
        else:
            devices += [
                dev.VirtioSerial(driver=tr.driver("virtio-serial"), id="vser0"),
                dev.ChardevSocket(id="agent", path=self.agent_socket, server=True, wait=False),
                dev.VirtSerialPort(bus="vser0.0", chardev="agent", name=AGENT_PORT_NAME, id="agent0"),
            ]
        if virtiofs:
            devices += [
                dev.ChardevSocket(id="virtiofs", path=self.path("virtiofs.sock")),
                dev.VhostUserFs(driver=tr.driver("vhost-user-fs"), chardev="virtiofs", tag="kuasar", id="fs0"),
            ]
        else:
            devices += [
                dev.Fsdev(id="extra-9p-kuasar", path=self.shared_dir),
                dev.Virtio9P(driver=tr.driver("virtio-9p"), fsdev="extra-9p-kuasar", mount_tag="kuasar",
                             id="fs0"),
            ]
        if cfg.image_path:
            devices += [dev.Drive(file=cfg.image_path, id="rootfs", readonly=True),
                        dev.VirtioBlk(driver=tr.driver("virtio-blk"), drive="rootfs", id="rootfs0")]
        for i, nic in enumerate(spec.nics):
            devices += [dev.TapNetdev(id="net%d" % i, ifname=nic.tap) if nic.tap else
                        dev.HubportNetdev(id="net%d" % i, hubid=i),
                        dev.VirtioNet(driver=tr.driver("virtio-net"), netdev="net%d" % i, mac=nic.mac,
                                      id="nic%d" % i)]
        if cfg.machine_type == "q35":
            devices.append(dev.PcieRootPort(id="rp0", bus="pcie.0", chassis=1, slot=1))
        return devices

    def argv(self) -> list[str]:
        """The full QEMU command line (without the ``nsenter`` prefix)."""
        cfg, spec = self.config, self.spec
        argv = [cfg.qemu_path, "-name", "sandbox-" + spec.id,
                "-cpu", cfg.cpu, "-smp", "%d,maxcpus=%d" % (spec.vcpus, max(spec.vcpus, cfg.default_max_vcpus)),
                "-m", "%dM" % spec.memory_mb,
                "-kernel", cfg.kernel_path]
        if cfg.initrd_path:
            argv += ["-initrd", cfg.initrd_path]
        if cfg.firmware:
            argv += ["-bios", cfg.firmware]
        argv += ["-append", self.kernel_params(),
                 "-qmp", "unix:%s,server=on,wait=off" % self.qmp.path,
                 "-serial", "file:%s" % self.path("console.log"),
                 "-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]
        if cfg.enable_mem_prealloc and self.ram is None:
            argv += ["-mem-prealloc"]
        if self.ram is not None and self.ram.incoming:
            argv += ["-incoming", "defer"]
        return argv + render_all(self.devices())

    def virtiofsd_argv(self) -> list[str]:
        cfg = self.config
        return [cfg.virtiofs_daemon_path, "--socket-path=%s" % self.path("virtiofs.sock"),
                "-o", "source=%s" % self.shared_dir, "-o", "cache=%s" % cfg.virtiofs_cache,
                "--syslog"] + list(cfg.virtiofs_extra_args)

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> int:
        if self.ram is None and self.warm_source is not None:
            warm = await self.warm_source(self.spec)
            if warm is not None:
                self.take_over(warm)
                return self.pid
        if self.ram is None and self.ram_source is not None:
            self.ram = await self.ram_source(self.spec)
        argv = self.in_netns(self.argv())  # before anything is spawned: it may raise
        self.prepare(("qmp.sock", "agent.sock", "virtiofs.sock"))
        if self.config.share_fs == SHARE_VIRTIOFS:
            await self.start_virtiofsd(self.virtiofsd_argv(), self.path("virtiofs.sock"))
        return await self.launch(argv, self._ready)

    async def _ready(self) -> None:
        """QMP answers; a restoring VM has loaded its template's state and runs."""
        await self.qmp.wait_ready(10.0, self.running)
        if self.ram is None or not self.ram.incoming:
            return
        await self.qmp.execute("migrate-set-capabilities",
                               {"capabilities": [{"capability": "x-ignore-shared", "state": True}]})
        await self.qmp.execute("migrate-incoming", {"uri": "exec:cat %s" % shlex.quote(self.ram.incoming)})
        await self.migration_done(30.0)
        await self.qmp.execute("cont")  # the template was saved stopped, so its state says paused
        self.template = self.ram.template
        log.info("sandbox %s: restored from template %s", self.spec.id, self.ram.template[:12])

    async def migration_done(self, timeout: float) -> None:
        """Wait for the migration (out or in) to complete. :raise Internal: it failed or took too long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = (await self.qmp.execute("query-migrate", timeout=5.0)).get("status", "none")
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise Internal("sandbox %s: migration %s; %s" % (self.spec.id, status, self.log_tail()))
            if loop.time() > deadline or not self.running():
                raise Internal("sandbox %s: migration not complete (%s) after %.0f s" % (self.spec.id, status, timeout))
            await asyncio.sleep(0.01)

    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        """``system_powerdown`` (unless ``force``), then ``quit``, then SIGKILL; virtiofsd after QEMU."""
        if self.pid and self.alive():
            steps: list[tuple[str, float]] = [] if force else [("system_powerdown", timeout)]
            steps.append(("quit", 3.0))
            for command, grace in steps:
                try:
                    await self.qmp.execute(command, timeout=2.0)
                except (Unavailable, Internal) as err:
                    log.debug("sandbox %s: QMP %s: %s", self.spec.id, command, err)
                    continue
                if await self.exited_within(grace):
                    break
            else:
                log.warning("sandbox %s: QEMU pid %d ignored QMP; killing it", self.spec.id, self.pid)
        await self.kill()

    async def pids(self) -> Pids:
        vcpus: tuple[int, ...] = ()
        try:
            cpus = await self.qmp.execute("query-cpus-fast", timeout=2.0)
            vcpus = tuple(int(c["thread-id"]) for c in cpus if "thread-id" in c)
        except (Unavailable, Internal) as err:
            log.debug("sandbox %s: no vCPU threads: %s", self.spec.id, err)
        return Pids(self.pid, vcpus, self.affiliated())

    async def ping(self) -> None:
        await self.qmp.execute("query-status", timeout=2.0)

    def take_over(self, other: ProcessVM) -> None:
        super().take_over(other)
        if isinstance(other, QemuVM):
            self.ram, self.template, self.warm = other.ram, other.template, True

    def record(self) -> dict[str, Any]:
        record = super().record()
        if self.template:
            record["template"] = self.template
        if self.warm:
            record["warm"] = True
        return record

    def adopt(self, record: dict[str, Any]) -> None:
        super().adopt(record)
        self.template = str(record.get("template", ""))
        self.warm = bool(record.get("warm", False))


def _guest_cid(sandbox_id: str) -> int:
    """A stable guest CID (3 .. 2^31-1) derived from the pod id."""
    import zlib
    return 3 + zlib.crc32(sandbox_id.encode()) % (0x7FFFFFFF - 3)
