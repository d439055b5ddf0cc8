"""QemuVM: one QEMU process per pod, started inside the pod's network namespace.

The command line is data (:meth:`QemuVM.devices` + :meth:`QemuVM.argv`), tested against expected argv.
QEMU is spawned (not ``-daemonize``d) as our child in its own session, through ``nsenter --net`` when
the pod has a network namespace (``nsenter`` execs QEMU, so the pid stays QEMU's); virtiofsd, when the
share is virtio-fs, is spawned the same way first. Stop is graceful (``system_powerdown``) unless
forced, then QMP ``quit``, then SIGKILL; helpers are killed after QEMU is gone.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Callable, Optional

from kuasar_shared import process
from kuasar_shared.errors import Internal, Unavailable
from kuasar_shared.oci import ExitWatch, is_same_process, kill, start_time, wait_exit

from kuasar_vmm_sandboxer.config import SHARE_VIRTIOFS, HypervisorConfig
from kuasar_vmm_sandboxer.devices import Device, Transport, render_all
from kuasar_vmm_sandboxer.hypervisors.qemu import devices as dev
from kuasar_vmm_sandboxer.hypervisors.qemu.qmp import Qmp
from kuasar_vmm_sandboxer.hypervisors.qemu.tsc import host_tsc_khz
from kuasar_vmm_sandboxer.vm import VM, Pids, VMSpec, exit_code

__all__ = ["QemuVM", "AGENT_PORT_NAME", "BASE_KERNEL_PARAMS"]

log = logging.getLogger(__name__)

#: the virtio-serial port the guest agent opens (contract with vmm-task)
AGENT_PORT_NAME = "kuasar.agent"
#: fast, quiet boot of a generic kernel on a serial console
BASE_KERNEL_PARAMS = ("console=ttyS0 panic=-1 reboot=t tsc=reliable no_timer_check noreplace-smp "
                      "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd rcupdate.rcu_expedited=1 random.trust_cpu=on")
_VSOCK_PORT = 1024


class QemuVM(VM):
    """A pod VM on QEMU. Files live in ``<pod dir>``: ``qmp.sock``, ``agent.sock``, ``console.log``,
    ``virtiofs.sock``, ``shared/`` (the share)."""

    def __init__(self, spec: VMSpec, config: HypervisorConfig) -> None:
        self.spec = spec
        self.config = config
        self.pid = 0
        self.pid_start: Optional[int] = None
        self.virtiofsd_pid = 0
        self.virtiofsd_start: Optional[int] = None
        self._proc: Optional[process.Process] = None
        self._helper: Optional[process.Process] = None
        self._watch: Optional[ExitWatch] = None
        self._status_task: Optional["asyncio.Future[Any]"] = None
        self.qmp = Qmp(self.path("qmp.sock"), "sandbox-" + spec.id)

    def __repr__(self) -> str:
        return "QemuVM(id=%s, pid=%d)" % (self.spec.id, self.pid)

    def path(self, name: str) -> str:
        return os.path.join(self.spec.pod_dir, name)

    @property
    def shared_dir(self) -> str:
        return self.path("shared")

    @property
    def agent_socket(self) -> str:
        return self.path("agent.sock")

    # --- command line ----------------------------------------------------------------------
    def kernel_params(self) -> str:
        """:raise FailedPrecondition: microvm under TCG, and the host's TSC rate is unknown."""
        cfg = self.config
        share = "virtiofs" if cfg.share_fs == SHARE_VIRTIOFS else "9p"
        params = [BASE_KERNEL_PARAMS, "task.sharefs_type=%s" % share, "task.log_level=%s" % self.spec.log_level]
        if self.spec.debug or cfg.debug:
            params.append("task.debug")
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
            dev.Machine(type=cfg.machine_type, memory_backend="mem0" if virtiofs else None,
                        extra=cfg.machine_accelerators),
            dev.Accel(type=cfg.accel, tb_size=cfg.tcg_tb_size_mb if cfg.accel == "tcg" else None),
        ]
        if virtiofs:
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
            devices += [dev.TapNetdev(id="net%d" % i, ifname=nic.tap),
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
        if cfg.enable_mem_prealloc:
            argv += ["-mem-prealloc"]
        return argv + render_all(self.devices())

    def virtiofsd_argv(self) -> list[str]:
        cfg = self.config
        return [cfg.virtiofs_daemon_path, "--socket-path=%s" % self.path("virtiofs.sock"),
                "-o", "source=%s" % self.shared_dir, "-o", "cache=%s" % cfg.virtiofs_cache,
                "--syslog"] + list(cfg.virtiofs_extra_args)

    def _in_netns(self, argv: list[str]) -> list[str]:
        if not self.spec.netns:
            return argv
        return ["nsenter", "--net=%s" % self.spec.netns, "--"] + argv

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> int:
        argv = self._in_netns(self.argv())  # before anything is spawned: it may raise
        os.makedirs(self.shared_dir, mode=0o755, exist_ok=True)
        for name in ("qmp.sock", "agent.sock", "virtiofs.sock"):
            try:
                os.unlink(self.path(name))
            except FileNotFoundError:
                pass
        if self.config.share_fs == SHARE_VIRTIOFS:
            await self._start_virtiofsd()
        log_fd = os.open(self.path("qemu.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            self._proc = process.spawn(argv, stdin=process.DEVNULL, stdout=log_fd,
                                       stderr=log_fd, start_new_session=True)
        finally:
            os.close(log_fd)
        self.pid, self.pid_start = self._proc.pid, start_time(self._proc.pid)
        try:
            await self.qmp.wait_ready(10.0, lambda: self._proc is not None and self._proc.returncode is None)
        except Unavailable as err:
            await self.stop(force=True)
            raise Internal("sandbox %s: QEMU did not start: %s; %s"
                           % (self.spec.id, err, self._log_tail())) from err
        self.pid_start = start_time(self.pid)
        log.info("sandbox %s: QEMU pid %d started", self.spec.id, self.pid)
        return self.pid

    async def _start_virtiofsd(self) -> None:
        self._helper = process.spawn(self._in_netns(self.virtiofsd_argv()), stdin=process.DEVNULL,
                                     start_new_session=True)
        self.virtiofsd_pid, self.virtiofsd_start = self._helper.pid, start_time(self._helper.pid)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not os.path.exists(self.path("virtiofs.sock")):
            if self._helper.returncode is not None or loop.time() > deadline:
                self._helper.kill()
                raise Internal("sandbox %s: virtiofsd did not create its socket" % self.spec.id)
            await asyncio.sleep(0.005)

    def _log_tail(self) -> str:
        try:
            with open(self.path("qemu.log"), "rb") as f:
                return "QEMU said: " + f.read()[-2000:].decode(errors="replace").strip()
        except OSError:
            return "no QEMU output"

    def _alive(self) -> bool:
        if self._proc is not None:
            return self._proc.returncode is None
        return is_same_process(self.pid, self.pid_start)

    async def stop(self, force: bool, timeout: float = 10.0) -> None:
        if self.pid and self._alive():
            steps: list[tuple[str, float]] = [] if force else [("system_powerdown", timeout)]
            steps.append(("quit", 3.0))
            for command, grace in steps:
                try:
                    await self.qmp.execute(command, timeout=2.0)
                except (Unavailable, Internal) as err:
                    log.debug("sandbox %s: QMP %s: %s", self.spec.id, command, err)
                    continue
                if await self._exited_within(grace):
                    break
            else:
                log.warning("sandbox %s: QEMU pid %d ignored QMP; killing it", self.spec.id, self.pid)
            if self._alive():
                kill(self.pid, signal.SIGKILL)
                await self._exited_within(10.0)
        if self.virtiofsd_pid and (self._helper is not None and self._helper.returncode is None
                                   or is_same_process(self.virtiofsd_pid, self.virtiofsd_start)):
            kill(self.virtiofsd_pid, signal.SIGKILL)
            await asyncio.wait_for(wait_exit(self.virtiofsd_pid), 5.0)

    async def _exited_within(self, seconds: float) -> bool:
        try:
            if self._proc is not None:
                await asyncio.wait_for(self._proc.wait(), seconds)
            else:
                await asyncio.wait_for(wait_exit(self.pid), seconds)
        except asyncio.TimeoutError:
            return False
        return True

    async def wait(self) -> int:
        if self._proc is not None:
            return (await self._proc.wait()).status
        await wait_exit(self.pid)
        return exit_code(None)

    def watch(self, callback: Callable[[int], None]) -> None:
        def fired() -> None:
            self._watch = None
            status = self._proc.returncode if self._proc is not None else None
            if self._proc is not None and status is None:
                # the pidfd fires before the reaper delivered the status: take it from there
                self._status_task = asyncio.ensure_future(self._proc.wait())
                self._status_task.add_done_callback(
                    lambda f: None if f.cancelled() else callback(f.result().status))
                return
            callback(exit_code(status))
        if self._watch is not None:
            self._watch.cancel()
        self._watch = ExitWatch(self.pid, fired)

    async def pids(self) -> Pids:
        vcpus: tuple[int, ...] = ()
        try:
            cpus = await self.qmp.execute("query-cpus-fast", timeout=2.0)
            vcpus = tuple(int(c["thread-id"]) for c in cpus if "thread-id" in c)
        except (Unavailable, Internal) as err:
            log.debug("sandbox %s: no vCPU threads: %s", self.spec.id, err)
        return Pids(self.pid, vcpus, (self.virtiofsd_pid,) if self.virtiofsd_pid else ())

    async def ping(self) -> None:
        await self.qmp.execute("query-status", timeout=2.0)

    async def hot_attach(self, device: Device) -> None:
        option, value = device.args()
        if option != "-device":
            raise Internal("only -device entries can be hot-plugged, not %s" % option)
        driver, *pairs = value.split(",")
        arguments: dict[str, Any] = {"driver": driver}
        for pair in pairs:
            key, _, val = pair.partition("=")
            arguments[key] = val
        await self.qmp.execute("device_add", arguments)

    async def hot_detach(self, device_id: str) -> None:
        await self.qmp.execute("device_del", {"id": device_id})

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "pid_start": self.pid_start, "virtiofsd_pid": self.virtiofsd_pid,
                "virtiofsd_start": self.virtiofsd_start}

    def adopt(self, record: dict[str, Any]) -> None:
        """Take over a VM started by an earlier sandboxer (no child handles, pidfd watches only)."""
        self.pid, self.pid_start = int(record.get("pid", 0)), record.get("pid_start")
        self.virtiofsd_pid, self.virtiofsd_start = int(record.get("virtiofsd_pid", 0)), record.get("virtiofsd_start")

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._status_task is not None:
            self._status_task.cancel()
            self._status_task = None


def _guest_cid(sandbox_id: str) -> int:
    """A stable guest CID (3 .. 2^31-1) derived from the pod id."""
    import zlib
    return 3 + zlib.crc32(sandbox_id.encode()) % (0x7FFFFFFF - 3)
