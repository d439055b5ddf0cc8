"""The QEMU command line as data: every device and option a pod VM gets."""
import asyncio

import pytest

from kuasar_shared.errors import FailedPrecondition
from kuasar_vmm_sandboxer.config import SHARE_VIRTIOFS
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu import vm as qemu_vm
from kuasar_vmm_sandboxer.hypervisors.qemu.tsc import host_tsc_khz
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import BASE_KERNEL_PARAMS, QemuVM
from kuasar_vmm_sandboxer.vm import Nic, PodResourceHooks, VMSpec, pod_resources


def _cfg(**kw):
    cfg = QemuConfig(accel="tcg", use_vsock=False, kernel_path="/k/vmlinux.bin", initrd_path="/k/kuasar.initrd")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_microvm_9p_argv(monkeypatch):
    monkeypatch.setattr(qemu_vm, "host_tsc_khz", lambda: 2445430)
    vm = QemuVM(VMSpec("p1", "/run/k/p1", 1, 256), _cfg())
    assert vm.argv() == [
        "/usr/bin/qemu-system-x86_64", "-name", "sandbox-p1", "-cpu", "qemu64,+rdrand", "-smp", "1,maxcpus=1",
        "-m", "256M", "-kernel", "/k/vmlinux.bin", "-initrd", "/k/kuasar.initrd",
        "-append", BASE_KERNEL_PARAMS + " quiet task.sharefs_type=9p task.log_level=info tsc_early_khz=2445430",
        "-qmp", "unix:/run/k/p1/qmp.sock,server=on,wait=off", "-serial", "file:/run/k/p1/console.log",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-machine", "microvm", "-accel", "tcg,tb-size=128",
        "-object", "rng-random,id=rng0,filename=/dev/urandom",
        "-device", "virtio-rng-device,rng=rng0,id=rng",
        "-device", "virtio-serial-device,id=vser0",
        "-chardev", "socket,id=agent,path=/run/k/p1/agent.sock,server=on,wait=off",
        "-device", "virtserialport,bus=vser0.0,chardev=agent,name=kuasar.agent,id=agent0",
        "-fsdev", "local,id=extra-9p-kuasar,path=/run/k/p1/shared,security_model=none,multidevs=remap",
        "-device", "virtio-9p-device,fsdev=extra-9p-kuasar,mount_tag=kuasar,id=fs0",
    ]


def test_microvm_mmio_devices_and_tsc_rate(monkeypatch):
    """Every virtio device of a microvm is virtio-mmio (``-device``), NICs and virtio-fs included; the
    TSC rate is the configured one when kernel_params has it, and absent under KVM and on q35."""
    monkeypatch.setattr(qemu_vm, "host_tsc_khz", lambda: 1)
    cfg = _cfg(share_fs=SHARE_VIRTIOFS, kernel_params="tsc_early_khz=2000000")
    vm = QemuVM(VMSpec("p4", "/d/p4", 1, 256, nics=(Nic("tap0", "02:00:00:00:00:04"),)), cfg)
    argv = vm.argv()
    drivers = [argv[i + 1].split(",")[0] for i, a in enumerate(argv) if a == "-device"]
    assert drivers == ["virtio-rng-device", "virtio-serial-device", "virtserialport", "vhost-user-fs-device",
                       "virtio-net-device"]
    assert argv[argv.index("-machine") + 1] == "microvm,memory-backend=mem0"
    assert argv[argv.index("-accel") + 1] == "tcg,tb-size=128"
    assert vm.kernel_params().endswith("task.log_level=info tsc_early_khz=2000000")
    for kw in ({"accel": "kvm"}, {"machine_type": "q35"}):
        assert "tsc_early_khz" not in QemuVM(VMSpec("p5", "/d/p5", 1, 256), _cfg(**kw)).kernel_params()


def test_microvm_without_host_tsc_rate_fails_before_spawning(monkeypatch, tmp_path):
    def unknown():
        raise FailedPrecondition("no TSC rate; add tsc_early_khz=<host TSC kHz> to [hypervisor].kernel_params")
    monkeypatch.setattr(qemu_vm, "host_tsc_khz", unknown)
    vm = QemuVM(VMSpec("p6", str(tmp_path), 1, 256), _cfg())
    with pytest.raises(FailedPrecondition, match="tsc_early_khz"):
        asyncio.run(vm.start())
    assert vm.pid == 0 and not (tmp_path / "shared").exists()


def _cpuinfo(tmp_path, mhz="2445.430", flags="fpu tsc constant_tsc nonstop_tsc"):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\ncpu MHz\t\t: {mhz}\nflags\t\t: {flags}\n\n"
                    f"processor\t: 1\ncpu MHz\t\t: 1200.000\nflags\t\t: {flags}\n")
    return str(path)


def test_host_tsc_khz(tmp_path):
    nodir = str(tmp_path / "no-cpufreq")
    assert host_tsc_khz(_cpuinfo(tmp_path), nodir) == 2445430
    with pytest.raises(FailedPrecondition, match="measured CPU frequency"):
        host_tsc_khz(_cpuinfo(tmp_path), str(tmp_path))  # a cpufreq driver: cpu MHz is not the TSC rate
    with pytest.raises(FailedPrecondition, match="measured CPU frequency"):
        host_tsc_khz(_cpuinfo(tmp_path, flags="tsc constant_tsc aperfmperf"), nodir)
    with pytest.raises(FailedPrecondition, match="no constant TSC rate"):
        host_tsc_khz(_cpuinfo(tmp_path, flags="fpu tsc"), nodir)
    with pytest.raises(FailedPrecondition, match="cannot read"):
        host_tsc_khz(str(tmp_path / "missing"), nodir)


def test_q35_virtiofs_nics_debug_kvm():
    cfg = _cfg(machine_type="q35", share_fs=SHARE_VIRTIOFS, accel="kvm", kernel_params="foo=1", debug=True)
    vm = QemuVM(VMSpec("p2", "/d/p2", 2, 512, netns="/var/run/netns/x",
                       nics=(Nic("tap_kua_0", "02:00:00:00:00:01"),)), cfg)
    argv = vm.argv()
    assert argv[argv.index("-cpu") + 1] == "host"
    assert argv[argv.index("-append") + 1].endswith("task.sharefs_type=virtiofs task.log_level=info task.debug foo=1")
    assert "quiet" not in argv[argv.index("-append") + 1].split()  # a debug VM's console has the whole kernel log
    tail = argv[argv.index("-machine"):]
    assert tail[:6] == ["-machine", "q35,memory-backend=mem0", "-accel", "kvm", "-object",
                        "memory-backend-memfd,id=mem0,size=512M,share=on"]
    assert "virtio-serial-pci,id=vser0" in tail
    assert "socket,id=virtiofs,path=/d/p2/virtiofs.sock" in tail
    assert "vhost-user-fs-pci,chardev=virtiofs,tag=kuasar,id=fs0" in tail
    assert "tap,id=net0,ifname=tap_kua_0,script=no,downscript=no" in tail
    assert "virtio-net-pci,netdev=net0,mac=02:00:00:00:00:01,id=nic0" in tail
    assert tail[-2:] == ["-device", "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1"]
    assert vm.virtiofsd_argv()[:2] == ["/usr/lib/qemu/virtiofsd", "--socket-path=/d/p2/virtiofs.sock"]
    assert vm.in_netns(["q"]) == ["nsenter", "--net=/var/run/netns/x", "--", "q"]


def test_vsock_replaces_serial_port(monkeypatch):
    monkeypatch.setattr(qemu_vm, "host_tsc_khz", lambda: 2445430)
    argv = QemuVM(VMSpec("p3", "/d/p3", 1, 256), _cfg(use_vsock=True)).argv()
    assert any(a.startswith("vhost-vsock-device,guest-cid=") for a in argv)
    assert not any("virtserialport" in a for a in argv)


def test_pod_resources_upstream_rule():
    cfg = {"linux": {"resources": {"cpu_quota": "150000", "cpu_period": "100000",
                                   "memory_limit_in_bytes": str(300 << 20)}}}
    assert pod_resources(cfg, 1, 1024) == (2, 300)
    assert pod_resources({}, 1, 1024) == (1, 1024)
    spec = PodResourceHooks().post_create(VMSpec("p", "/d", 1, 1024), cfg)
    assert (spec.vcpus, spec.memory_mb) == (2, 300)
