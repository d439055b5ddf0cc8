"""The warm VM pool against real QEMU (TCG) and the real guest image: the first pod of a class restores from
its template and has the pool keep a warm VM of it; the next pod takes that VM, with its own files, share,
hostname and entropy, and the pool fills again; a sandboxer that starts stops the warm VMs a killed one
left; closing stops the rest."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import replace

import pytest
from google.protobuf import empty_pb2
from agent_calls import SVC, exec_in_guest, setup_pod

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.config import ConfigError
from kuasar_shared.process_identity import is_same_process
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_sandboxer import network
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.pool import POOL_DIR, WARM_UP, WarmPool, _Warm
from kuasar_vmm_sandboxer.hypervisors.qemu.template import Templates, template_key
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import Nic, VMSpec

#: boot id, 32 random bytes, the pod's hostname, the share's files; then the guest writes into the share
IDENTITY = ("cat /proc/sys/kernel/random/boot_id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; "
            "nsenter --uts=/run/sandbox-ns/uts hostname; ls /run/kuasar/state | tr '\\n' ,; echo; "
            "echo guest > /run/kuasar/state/from-guest")


async def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


def _pod(root: str, name: str) -> VMSpec:
    pod_dir = os.path.join(root, name)
    os.makedirs(os.path.join(pod_dir, "shared"))
    with open(os.path.join(pod_dir, "shared", "hostname"), "w") as f:
        f.write(name + "\n")
    return VMSpec(name, pod_dir, 1, 256)


async def _mux(vm: QemuVM) -> MuxConnection:
    return MuxConnection(*(await asyncio.open_unix_connection(vm.agent_socket)), is_host=True)


async def test_a_pod_takes_a_warm_vm_of_its_class_and_the_pool_fills_again(tpl_config, short_tmp):
    cfg = QemuConfig(**{**tpl_config.__dict__, "template_pool": 1})
    factory = QemuFactory(cfg)
    assert factory.pool is not None
    factory.use_directory(short_tmp)
    pool_dir = os.path.join(short_tmp, POOL_DIR)
    vms: list[QemuVM] = []
    muxes: list[MuxConnection] = []
    try:
        first = factory.create(_pod(short_tmp, "p0"))
        vms.append(first)
        await first.start()  # no warm VM of this class yet: restored from the template, the class is kept
        assert first.template and not first.warm
        digest = template_key(factory.config, first.spec)[0]
        await _until(lambda: factory.pool.ready(digest) == 1, 120, "no warm VM after 120 s")
        [entry] = os.listdir(pool_dir)
        with open(os.path.join(pool_dir, entry, "warm.json")) as f:
            warm_pid = json.load(f)["pid"]

        second = factory.create(_pod(short_tmp, "p1"))
        vms.append(second)
        begin = time.monotonic()
        await second.start()
        print("warm VM taken in %.3f s" % (time.monotonic() - begin))
        assert second.warm and second.pid == warm_pid and second.template == digest
        assert second.record()["warm"] is True and second.record()["template"] == digest
        assert entry not in os.listdir(pool_dir), "the taken VM's entry is still in the pool"
        assert sorted(os.listdir(second.spec.pod_dir)) == ["agent.sock", "console.log", "qemu.log", "qmp.sock",
                                                           "shared"]
        await second.ping()  # QMP on its socket under the pod's path
        for i, vm in enumerate(vms):
            muxes.append(await _mux(vm))
            await setup_pod(muxes[i], "pod-%d" % i)
        with open(os.path.join(second.spec.pod_dir, "shared", "from-host"), "w") as f:
            f.write("p1 only\n")
        outs = []
        for mux in muxes:
            outs.append((await exec_in_guest(mux, IDENTITY)).split())
        # the hostname is the one Create wrote into each pod's share
        assert outs[1][2:] == ["p1", "from-host,hostname,"], "the warm VM does not serve its pod's share"
        assert outs[0][2:] == ["p0", "hostname,"]
        assert outs[0][0] != outs[1][0] and outs[0][1] != outs[1][1], "same boot id or entropy in two VMs"
        with open(os.path.join(second.spec.pod_dir, "shared", "from-guest")) as f:
            assert f.read() == "guest\n"

        # the pool fills again; a sandboxer killed now leaves that warm VM, the next one stops it
        await _until(lambda: factory.pool.ready(digest) == 1, 120, "the pool did not fill again")
        [refill] = os.listdir(pool_dir)
        with open(os.path.join(pool_dir, refill, "warm.json")) as f:
            record = json.load(f)
        assert is_same_process(record["pid"], record["pid_start"])
        QemuFactory(cfg).use_directory(short_tmp)
        await _until(lambda: not is_same_process(record["pid"], record["pid_start"]), 10, "leftover warm VM alive")
        assert os.listdir(pool_dir) == []
    finally:
        for mux in muxes:
            await mux.close()
        await factory.close()
        for vm in vms:
            await vm.stop(force=True)
    assert all(not vm.alive() for vm in vms)


async def test_closing_stops_the_warm_vms(tpl_config, short_tmp):
    factory = QemuFactory(QemuConfig(**{**tpl_config.__dict__, "template_pool": 2, "template_at_start": True}))
    factory.use_directory(short_tmp)
    assert factory.pool is not None
    plain = VMSpec("default", short_tmp, 1, 256)
    await factory.prepare_class(plain)
    digest = template_key(factory.config, plain)[0]
    try:
        await _until(lambda: factory.pool.ready(digest) == 2, 180, "the pool did not fill to 2")
        pids = []
        for entry in os.listdir(os.path.join(short_tmp, POOL_DIR)):
            with open(os.path.join(short_tmp, POOL_DIR, entry, "warm.json")) as f:
                record = json.load(f)
            pids.append((record["pid"], record["pid_start"]))
        assert len(pids) == 2
        other = VMSpec("o", os.path.join(short_tmp, "o"), 1, 256, nics=(Nic("tap_kua_0", "02:00:00:00:00:09"),))
        assert await factory.pool.take(other) is None, "a warm VM of another class was handed out"
        assert factory.pool.ready(digest) == 2
    finally:
        await factory.close()
    assert not any(is_same_process(pid, start) for pid, start in pids)
    assert os.listdir(os.path.join(short_tmp, POOL_DIR)) == []


def _ip(netns: str, *args: str) -> str:
    return subprocess.run(["ip", "-n", netns, *args], capture_output=True, text=True, check=True).stdout


async def test_a_pod_with_a_nic_takes_a_warm_vm_and_its_tap(tpl_config, short_tmp, pod_netns):
    """The warm VM's tap, made in its own netns, replaces the pod's under the same name: the guest reaches the
    pod network's peer through it; removing the pod's network leaves no tap."""
    factory = QemuFactory(QemuConfig(**{**tpl_config.__dict__, "template_pool": 1, "template_at_start": True}))
    factory.use_directory(short_tmp)
    assert factory.pool is not None
    net = await network.setup(pod_netns["path"])
    spec = replace(_pod(short_tmp, "pn"), netns=pod_netns["path"], nics=net.nics)
    await factory.prepare_class(replace(spec, id="default", nics=(Nic(tap="", mac=""),)))
    digest = template_key(factory.config, spec)[0]
    vm = factory.create(spec)
    mux = None
    try:
        await _until(lambda: factory.pool.ready(digest) == 1, 180, "no warm VM with a NIC")
        made_by_setup = _ip(pod_netns["pod"], "-o", "link", "show", "tap_kua_0").split(":")[0]
        await vm.start()
        assert vm.warm
        tap = _ip(pod_netns["pod"], "-o", "link", "show", "tap_kua_0")
        assert tap.split(":")[0] != made_by_setup and "UP" in tap, "the pod's tap was not replaced by the VM's"
        assert "kw" not in _ip(pod_netns["pod"], "-o", "link")
        wired = subprocess.run(["ip", "netns", "exec", pod_netns["pod"], "sh", "-c", "tc filter show dev eth0 parent "
                                "ffff:; tc filter show dev tap_kua_0 parent ffff:"], capture_output=True, text=True,
                               check=True).stdout
        assert "Redirect to device tap_kua_0" in wired and "Redirect to device eth0" in wired, wired
        mux = await _mux(vm)
        await setup_pod(mux, "pn", net)
        out = await exec_in_guest(mux, "ping -c 1 -W 5 10.231.0.1 >/dev/null && echo reached; cat /sys/class/net/"
                                       "eth0/address")
        assert out.split() == ["reached", net.interfaces[0].mac], out
    finally:
        if mux is not None:
            await mux.close()
        await vm.stop(force=True)
        await factory.close()
        await network.destroy(net)
    assert "tap_kua" not in _ip(pod_netns["pod"], "-o", "link")


async def test_the_warm_up_runs_a_container_with_the_agents_sealed_runc(tpl_config, short_tmp):
    """WARM_UP itself, in a restored VM: it finds the agent's memfd copy, runs its container, leaves nothing."""
    factory = QemuFactory(tpl_config)
    vm = factory.create(_pod(short_tmp, "w"))
    mux = None
    try:
        await vm.start()
        mux = await _mux(vm)
        client = Client(*(await mux.open()))
        await client.call(SVC, "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, timeout=30)
        await client.close()
        out = await exec_in_guest(mux, WARM_UP)
        assert out.split()[-1:] == ["warm"], out
        left = await exec_in_guest(mux, "ls -d /run/kuasar-warm.* 2>/dev/null | wc -l; "
                                        "ls /sys/fs/cgroup | grep -c warm")
        assert left.split() == ["0", "0"], "the warm-up left its bundle or cgroup: " + left
        out = await exec_in_guest(mux, WARM_UP.replace("$PPID", "$$"))  # a process without the copy: a clear error
        assert "no sealed runc copy" in out and "warm" not in out.split(), out
    finally:
        if mux is not None:
            await mux.close()
        await vm.stop(force=True)


async def test_warm_vms_of_a_changed_image_are_stopped_when_pods_ask_for_the_new_one(short_tmp):
    """A class's digest follows its kernel: after an image upgrade its warm VMs can never be taken again."""
    kernel = os.path.join(short_tmp, "vmlinux.bin")
    with open(kernel, "w") as f:
        f.write("old kernel")
    cfg = QemuConfig(**{**QemuConfig().__dict__, "template": "auto", "template_pool": 1, "accel": "tcg",
                        "kernel_path": kernel, "template_dir": os.path.join(short_tmp, "templates")})
    pool = WarmPool(cfg, Templates(cfg))
    pool.open(short_tmp)
    spec = VMSpec("p", os.path.join(short_tmp, "p"), 1, 256)
    old = template_key(cfg, spec)[0]
    entry = os.path.join(short_tmp, POOL_DIR, "old")
    os.makedirs(entry)
    pool._classes[old] = spec  # as keep() left it, with one warm VM ready
    pool._ready[old] = [_Warm(vm=QemuVM(replace(spec, id="warm-old", pod_dir=entry), cfg), digest=old, entry=entry)]
    try:
        with open(kernel, "w") as f:
            f.write("new kernel, another size")
        assert await pool.take(spec) is None  # the new class is kept from now on; the old one is gone
        assert pool.ready(old) == 0 and old not in pool._classes and not os.path.exists(entry)
        assert list(pool._classes) == [template_key(cfg, spec)[0]]
    finally:
        await pool.close()


@pytest.mark.parametrize("changes, message", [
    ({"template_pool": -1}, "template_pool"), ({"template_pool": 17}, "template_pool"),
    ({"template_pool": 1, "template": "off"}, 'template = "off"'),
])
def test_pool_settings_are_checked(changes, message):
    cfg = QemuConfig(**{**QemuConfig().__dict__, "template": "auto", **changes})
    with pytest.raises(ConfigError, match=message):
        cfg.check("config.toml")
