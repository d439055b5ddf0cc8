"""The StratoVirt command line as data, against upstream Kuasar's own expectations.

Golden fragments are copied from the tests of upstream's ``vmm/sandbox/src/stratovirt/`` (config.rs
``test_stratovirt_params``, devices/{rng,serial,console,vhost_user_fs,virtio_net}.rs); where ours differs on
purpose (no ``-daemonize``, console to a file, the agent on a named virtserialport instead of vhost-vsock,
paths in the pod dir) the test says so.
"""
import pytest

from kuasar_shared.config import ConfigError
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.stratovirt.config import StratoVirtConfig
from kuasar_vmm_sandboxer.hypervisors.stratovirt.vm import BASE_KERNEL_PARAMS, StratoVirtVM
from kuasar_vmm_sandboxer.vm import Nic, VMSpec


def _vm(**kw) -> StratoVirtVM:
    cfg = StratoVirtConfig(kernel_path="/var/lib/kuasar/vmlinux.bin", initrd_path="/var/lib/kuasar/initrd",
                           machine_type="q35,mem-share=on")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return StratoVirtVM(VMSpec("1", "/path/to", 1, 1024, nics=(Nic("tap0", "a1:b2:c3:d5:f4:00"),)), cfg)


def test_vm_options_follow_upstream_order():
    argv = _vm(enable_mem_prealloc=True, debug=True).argv()
    head = argv[:argv.index("-object")]
    # upstream: -name -uuid -machine -qmp -kernel -initrd -append -smp -m -pidfile -D -global [-daemonize]
    # -disable-seccomp -mem-prealloc; we keep StratoVirt in the foreground (our child, like QEMU)
    assert head == [
        "/usr/bin/stratovirt", "-name", "sandbox-1", "-uuid", head[4], "-machine", "q35,mem-share=on",
        "-qmp", "unix:/path/to/qmp.sock,server,nowait",
        "-kernel", "/var/lib/kuasar/vmlinux.bin", "-initrd", "/var/lib/kuasar/initrd",
        "-append", BASE_KERNEL_PARAMS + " task.sharefs_type=virtiofs task.log_level=info debug task.debug",
        "-smp", "cpus=1", "-m", "1024M", "-pidfile", "/path/to/sandbox-1.pid", "-D", "/path/to/sandbox-1.log",
        "-global", "pcie-root-port.fast-unplug=1", "-disable-seccomp", "-mem-prealloc"]
    assert BASE_KERNEL_PARAMS == "console=hvc0 console=hvc1 iommu=off panic=1 pcie_ports=native"
    assert "-daemonize" not in argv
    assert _vm().argv()[4] == head[4], "the uuid is stable per pod id"


def test_devices_match_upstream_fragments():
    argv = _vm().argv()
    tail = argv[argv.index("-object"):]
    assert tail[:4] == ["-object", "rng-random,id=rng0,filename=/dev/urandom",
                        "-device", "virtio-rng-pci,rng=rng0,id=virtio-rng0,bus=pcie.0,addr=0x1"]
    assert tail[4:6] == ["-device", "virtio-serial-pci,id=virtio-serial0,bus=pcie.0,addr=0x2"]
    # upstream: -chardev socket,id=charconsole0,path=<base>/console.sock,server,nowait (read by a task), and
    # no nr; StratoVirt's guidebook: once one port sets nr, all must (the agent's is nr=1)
    assert tail[6:10] == ["-chardev", "file,id=charconsole0,path=/path/to/console.log",
                          "-device", "virtconsole,id=virtio-console0,chardev=charconsole0,nr=0"]
    # upstream reaches the agent over vhost-vsock; ours is the guest agent's mux port, unnamed port 1 (a
    # virtserialport takes only id, chardev and nr)
    assert tail[10:14] == ["-chardev", "socket,id=charagent0,path=/path/to/agent.sock,server,nowait",
                           "-device", "virtserialport,id=virtio-agent0,chardev=charagent0,nr=1"]
    assert tail[14:18] == ["-chardev", "socket,id=virtio-fs-1,path=/path/to/virtiofs.sock,server,nowait",
                           "-device", "vhost-user-fs-pci,id=vhost-user-fs-1,chardev=virtio-fs-1,tag=kuasar,"
                                      "bus=pcie.0,addr=0x3"]
    assert tail[18:] == ["-netdev", "tap,id=net0,ifname=tap0",
                         "-device", "virtio-net-pci,netdev=net0,id=virtio-net0,bus=pcie.0,addr=0x4,"
                                    "mac=a1:b2:c3:d5:f4:00"]


def test_image_firmware_and_microvm():
    argv = _vm(initrd_path="", image_path="/k/kuasar.img", firmware="/fw/OVMF_CODE.fd").argv()
    assert "-initrd" not in argv
    assert argv[argv.index("-append") + 1].endswith("root=/dev/vda ro rootfstype=ext4")
    assert ["-drive", "file=/fw/OVMF_CODE.fd,if=pflash,format=raw,unit=0,readonly=on"] == \
        argv[argv.index("-drive"):argv.index("-drive") + 2]
    assert "id=rootfs,file=/k/kuasar.img,readonly=on" in argv
    assert "virtio-blk-pci,drive=rootfs,id=blk-0,bus=pcie.0,addr=0x4" in argv
    micro = _vm(machine_type="microvm,mem-share=on").argv()
    assert "-global" not in micro and "virtio-serial-device,id=virtio-serial0" in micro
    assert not any("bus=pcie.0" in a for a in micro)
    # microvm allows one virtio-serial port: the agent's; the console is the legacy serial
    assert not any(a.startswith("virtconsole") for a in micro)
    assert micro[micro.index("-serial") + 1] == "file,path=/path/to/console.log"
    assert micro[micro.index("-append") + 1].startswith(BASE_KERNEL_PARAMS + " console=ttyS0 ")  # the last wins


def test_vhost_user_fs_daemon_argv():
    assert _vm().virtiofsd_argv() == ["/usr/bin/vhost_user_fs", "-D", "/path/to/virtiofsd.log",
                                      "-socket-path", "/path/to/virtiofs.sock", "-source", "/path/to/shared"]


@pytest.mark.parametrize("text, key", [
    ("machine_type = 'pc'", "[hypervisor].machine_type"),
    ("machine_type = 'q35'", "[hypervisor].machine_type"),
    ("machine_type = 'microvm'", "[hypervisor].machine_type"),
    ("image_path = '/i'\ninitrd_path = '/r'", "[hypervisor]"),
    ("block_device_driver = 'ide'", "[hypervisor].block_device_driver"),
    ("path = ''", "[hypervisor].path"),
    ("[hypervisor.virtiofsd_conf]\npath = 3", "[hypervisor.virtiofsd_conf].path"),
])
def test_bad_config_names_file_and_key(text, key):
    with pytest.raises(ConfigError) as err:
        config.parse("[hypervisor]\ntype = 'stratovirt'\n" + text + "\n", "/etc/sv.toml")
    assert (err.value.path, err.value.key) == ("/etc/sv.toml", key)
