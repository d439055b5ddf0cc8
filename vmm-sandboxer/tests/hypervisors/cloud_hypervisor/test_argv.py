"""The Cloud Hypervisor command line as data, against upstream Kuasar's ``cloud_hypervisor/`` (config.rs
``test_cmdline`` renders ``--api-socket``, ``--cpus boot=N``, ``--memory size=<bytes>,shared=..,hugepages=..``,
``--kernel``, ``--cmdline`` in that order; factory.rs adds ``--pmem``, ``--rng``, ``--vsock`` (socket
``<base>/task.vsock``, agent ``hvsock://...:1024``), ``--console``, ``--fs tag=kuasar``). Ours boots the initrd our
guest builder makes unless ``image_path`` is set, and keeps the console log in the pod dir."""
import pytest

from kuasar_shared.config import ConfigError
from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.config import CloudHypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.vm import ROOTFS_KERNEL_PARAMS, CloudHypervisorVM
from kuasar_vmm_sandboxer.vm import Nic, VMSpec


def _vm(**kw) -> CloudHypervisorVM:
    cfg = CloudHypervisorConfig(kernel_path="/path/to/kernel", initrd_path="", image_path="/k/kuasar.img")
    for k, v in kw.items():
        setattr(cfg, k, v)
    return CloudHypervisorVM(VMSpec("p1", "/d/p1", 2, 4096, nics=(Nic("tap0", "02:00:00:00:00:01"),)), cfg)


def test_upstream_image_layout():
    vm = _vm()
    assert vm.argv() == [
        "/usr/local/bin/cloud-hypervisor", "--api-socket", "/d/p1/api.sock", "--cpus", "boot=2",
        "--memory", "size=4294967296,shared=on,hugepages=off", "--kernel", "/path/to/kernel",
        "--cmdline", "console=hvc0 " + ROOTFS_KERNEL_PARAMS + " task.sharefs_type=virtiofs task.log_level=info "
                     "task.enable_tracing=false",
        "--pmem", "id=rootfs,file=/k/kuasar.img,discard_writes=on", "--rng", "src=/dev/urandom",
        "--vsock", "cid=3,socket=/d/p1/task.vsock,id=vsock", "--console", "file=/d/p1/console.log",
        "--fs", "tag=kuasar,socket=/d/p1/virtiofs.sock,id=fs", "--net", "id=net0,tap=tap0,mac=02:00:00:00:00:01"]
    assert ROOTFS_KERNEL_PARAMS == "root=/dev/pmem0p1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
    assert vm.agent_address == "hvsock:///d/p1/task.vsock:1024"


def test_initrd_debug_and_task_switches():
    cfg = config.parse("[hypervisor]\ntype = 'cloud-hypervisor'\ndebug = true\nhugepages = true\n"
                       "[hypervisor.task]\ndebug = true\nenable_tracing = true\n").hypervisor
    argv = CloudHypervisorVM(VMSpec("p2", "/d/p2", 1, 512), cfg).argv()
    assert argv[argv.index("--initramfs") + 1] == "/var/lib/kuasar/kuasar.initrd"
    assert "--pmem" not in argv and argv[-1] == "-vv"
    assert argv[argv.index("--memory") + 1] == "size=536870912,shared=on,hugepages=on"
    assert argv[argv.index("--cmdline") + 1] == ("console=hvc0 task.sharefs_type=virtiofs task.log_level=debug "
                                                "task.debug task.enable_tracing=true")


def test_virtiofsd_argv_from_its_section():
    assert _vm().virtiofsd_argv() == [
        "/usr/local/bin/virtiofsd", "--log-level", "info", "--cache", "never", "--thread-pool-size", "4",
        "--socket-path", "/d/p1/virtiofs.sock", "--shared-dir", "/d/p1/shared", "--syslog"]


@pytest.mark.parametrize("text, key", [
    ("image_path = '/i'\ninitrd_path = '/r'", "[hypervisor]"),
    ("path = ''", "[hypervisor].path"),
    ("hugepages = 'yes'", "[hypervisor].hugepages"),
    ("[hypervisor.virtiofsd]\ncache = 'sometimes'", "[hypervisor.virtiofsd].cache"),
    ("[hypervisor.task]\ndebug = 1", "[hypervisor.task].debug"),
])
def test_bad_config_names_file_and_key(text, key):
    with pytest.raises(ConfigError) as err:
        config.parse("[hypervisor]\ntype = 'cloud-hypervisor'\n" + text + "\n", "/etc/clh.toml")
    assert (err.value.path, err.value.key) == ("/etc/clh.toml", key)
