"""VM templates against real QEMU (TCG) and the real guest image: one template made at first use, two
pods restored from it, each with its own entropy, boot id, share and hostname; the template store
lists and removes what it made."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from agent_calls import exec_in_guest, setup_pod

from kuasar_shared.errors import FailedPrecondition
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.template import (TemplateStore, Templates, stop_abandoned_builders,
                                                           template_key)
from kuasar_vmm_sandboxer.vm import Nic, VMSpec

async def test_two_pods_from_one_template_each_have_their_own_identity(tpl_config, short_tmp):
    factory = QemuFactory(tpl_config)
    vms, muxes = [], []
    try:
        for i in range(2):
            pod_dir = os.path.join(short_tmp, "p%d" % i)
            os.makedirs(os.path.join(pod_dir, "shared"))
            with open(os.path.join(pod_dir, "shared", "mine-%d" % i), "w") as f:
                f.write("pod %d\n" % i)
            vm = factory.create(VMSpec("tp%d" % i, pod_dir, 1, 256))
            vms.append(vm)
            begin = time.monotonic()
            await vm.start()
            assert vm.ram is not None and vm.ram.incoming, "the pod did not restore from a template"
            muxes.append(MuxConnection(*(await asyncio.open_unix_connection(vm.agent_socket)), is_host=True))
            await setup_pod(muxes[i], "pod-%d" % i)
            print("pod %d: restore + Check + SetupSandbox %.2f s" % (i, time.monotonic() - begin))
        store = TemplateStore(tpl_config.template_dir)
        made = store.all()
        assert [t.digest for t in made] == [vms[0].ram.template] == [vms[1].ram.template]
        assert made[0].memory_mb == 256 and made[0].nics == 0
        outs = []
        for mux in muxes:
            out = await exec_in_guest(mux, "cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An "
                                           "-tx1 | tr -d ' \\n'; echo; nsenter --uts=/run/sandbox-ns/uts hostname; "
                                           "ls /run/kuasar/state; grep -c ' 9p kuasar ' /proc/self/mountinfo")
            outs.append(out.split())
        for i, (boot_id, random, hostname, share, mounts) in enumerate(outs):
            assert hostname == "pod-%d" % i and share == "mine-%d" % i and mounts == "1"
            assert len(boot_id) == 36 and len(random) == 64
        assert outs[0][0] != outs[1][0], "same boot_id in two VMs of one template"
        assert outs[0][1] != outs[1][1], "same random bytes in two VMs of one template"
    finally:
        for mux in muxes:
            await mux.close()
        for vm in vms:
            await vm.stop(force=True)
    assert all(not vm.alive() for vm in vms)
    assert TemplateStore(tpl_config.template_dir).remove("") and os.listdir(tpl_config.template_dir) == []


def test_template_key_follows_the_image_and_the_vm_class(tpl_config, short_tmp):
    spec = VMSpec("a", short_tmp, 1, 256)
    digest, described = template_key(tpl_config, spec)
    assert template_key(tpl_config, VMSpec("b", "/elsewhere", 1, 256))[0] == digest  # pod identity is not part
    assert template_key(tpl_config, VMSpec("a", short_tmp, 2, 256))[0] != digest
    assert template_key(tpl_config, VMSpec("a", short_tmp, 1, 256, nics=(Nic("tap0", "02:00:00:00:00:01"),)))[0] \
        != digest
    assert "task.template" in described["kernel_params"]
    kernel = os.path.join(short_tmp, "vmlinux.bin")
    with open(kernel, "wb") as f:
        f.write(b"another kernel")
    other = QemuConfig(**{**tpl_config.__dict__, "kernel_path": kernel})
    assert template_key(other, spec)[0] != digest


async def test_required_fails_a_pod_that_cannot_have_a_template(tpl_config, short_tmp):
    cfg = QemuConfig(**{**tpl_config.__dict__, "template": "required", "share_fs": "virtio-fs"})
    with pytest.raises(FailedPrecondition, match="virtio-fs"):
        await Templates(cfg).ram_for(VMSpec("r", short_tmp, 1, 256))
    cfg.template = "auto"
    assert await Templates(cfg).ram_for(VMSpec("r", short_tmp, 1, 256)) is None


def test_argv_of_a_template_and_of_a_restore(tpl_config, short_tmp):
    from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM, RamFile

    nic = Nic(tap="", mac="02:6b:75:00:00:00")
    made = QemuVM(VMSpec("t", short_tmp, 1, 256, nics=(nic,)), tpl_config, RamFile(path="/t/memory")).argv()
    assert "memory-backend-file,id=mem0,size=256M,mem-path=/t/memory,share=on" in made
    assert "q35,memory-backend=mem0" in made and "vmgenid,guid=auto,id=vmgenid0" in made
    assert "hubport,id=net0,hubid=0" in made and "-incoming" not in made
    assert "task.template" in made[made.index("-append") + 1]
    pod = Nic(tap="tap_kua_0", mac="0a:58:0a:f4:00:05")
    restored = QemuVM(VMSpec("p", short_tmp, 1, 256, nics=(pod,)), tpl_config,
                      RamFile(path="/t/memory", incoming="/t/state", template="ab")).argv()
    assert "memory-backend-file,id=mem0,size=256M,mem-path=/t/memory,share=off" in restored
    assert restored[restored.index("-incoming") + 1] == "defer"
    assert "tap,id=net0,ifname=tap_kua_0,script=no,downscript=no" in restored


async def test_a_template_build_abandoned_by_a_killed_sandboxer_has_its_qemu_stopped(short_tmp):
    """The next attempt finds the half-made directory and the process mapping its RAM file, and kills that one only."""
    work = os.path.join(str(short_tmp), ".b-abandoned")
    os.makedirs(work)
    holds = "memory-backend-file,id=mem0,mem-path=%s,share=on" % os.path.join(work, "memory")
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    builder = subprocess.Popen(sleeper + ["-object", holds])
    bystander = subprocess.Popen(sleeper + ["-object", holds.replace("/memory,", "/memory-of-another,")])
    try:
        await stop_abandoned_builders(work)
        assert builder.wait(timeout=5) == -signal.SIGKILL
        assert bystander.poll() is None
        await stop_abandoned_builders(os.path.join(str(short_tmp), ".b-never-made"))  # nothing there: no-op
    finally:
        for proc in (builder, bystander):
            proc.kill()
            proc.wait()


async def test_template_at_start_makes_the_default_class_before_any_pod(tpl_config, short_tmp):
    default = VMSpec("default-class", short_tmp, 1, 256, nics=(Nic(tap="", mac=""),))
    await QemuFactory(tpl_config).prepare_class(default)  # template_at_start is off: nothing is made
    assert not os.path.isdir(tpl_config.template_dir) or TemplateStore(tpl_config.template_dir).all() == []

    factory = QemuFactory(QemuConfig(**{**tpl_config.__dict__, "template_at_start": True}))
    try:
        await factory.prepare_class(default)
        made = TemplateStore(tpl_config.template_dir).all()
        assert [(t.digest, t.nics) for t in made] == [(template_key(factory.config, default)[0], 1)]
        assert factory.templates is not None
        pod = VMSpec("p1", short_tmp, 1, 256, nics=(Nic("tap-p1", "02:00:00:00:00:07"),))
        ram = await factory.templates.ram_for(pod)  # the first pod of that class finds it ready
        assert ram is not None and ram.template == made[0].digest
        assert len(TemplateStore(tpl_config.template_dir).all()) == 1
    finally:
        TemplateStore(tpl_config.template_dir).remove("")
