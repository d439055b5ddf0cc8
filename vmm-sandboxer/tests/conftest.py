"""Fixtures for the vmm-sandboxer tests: private network namespaces, a short temp dir (unix socket paths
must stay under 108 bytes) and each hypervisor's shipped config pointed at the fake binaries of
``fakes/`` (StratoVirt and Cloud Hypervisor cannot run here; QEMU also runs for real elsewhere)."""
from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import uuid
from typing import AsyncIterator, Callable

import pytest
import pytest_asyncio

from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_vmm_sandboxer import config, hypervisors
from kuasar_vmm_sandboxer.kvm import KvmProbe
from kuasar_vmm_sandboxer.main import RELAY
from kuasar_vmm_sandboxer.vm import VMFactory

TESTS = os.path.dirname(os.path.abspath(__file__))
FAKES = os.path.join(TESTS, "fakes")
#: what a fake hypervisor that needs KVM is told of this host (the fakes need none; StratoVirt and Cloud
#: Hypervisor would refuse to start here without it)
FAKE_KVM = KvmProbe(True, "not needed by the fake")
#: [hypervisor] type -> the config file shipped for it
SHIPPED = {"qemu": "config_qemu.toml", "stratovirt": "config_stratovirt.toml", "cloud-hypervisor": "config_clh.toml"}


def fake_binary(directory: str, fake: str) -> str:
    """An executable in ``directory`` that execs ``fakes/fake_<fake>.py`` (so the VMM pid is the fake's)."""
    path = os.path.join(directory, fake)
    with open(path, "w") as f:
        f.write('#!/bin/sh\nexec "%s" "%s" "$@"\n' % (sys.executable, os.path.join(FAKES, "fake_%s.py" % fake)))
    os.chmod(path, stat.S_IRWXU)
    return path


def shipped_config(hypervisor: str) -> config.VmmConfig:
    return config.load(os.path.join(os.path.dirname(TESTS), SHIPPED[hypervisor]))


@pytest.fixture
def fake_hypervisor(short_tmp: str) -> Callable[[str], config.VmmConfig]:
    """``make(type)``: the shipped config of ``type`` with its binaries replaced by fakes, empty stand-ins
    for the guest kernel/initrd/image, a 10 s boot timeout and no containerd to forward events to."""
    def make(hypervisor: str) -> config.VmmConfig:
        cfg = shipped_config(hypervisor)
        hv = cfg.hypervisor
        for name in ("vmlinux.bin", "kuasar.initrd", "kuasar.img"):
            open(os.path.join(short_tmp, name), "w").close()
        hv.kernel_path = os.path.join(short_tmp, "vmlinux.bin")
        hv.initrd_path = os.path.join(short_tmp, "kuasar.initrd") if hv.initrd_path else ""
        hv.image_path = os.path.join(short_tmp, "kuasar.img") if hv.image_path else ""
        hv.boot_timeout_secs = 10
        cfg.sandbox.containerd_ttrpc_address = ""
        if hypervisor == "qemu":
            hv.qemu_path = fake_binary(short_tmp, "qemu")  # type: ignore[attr-defined]
            hv.use_vsock = False  # type: ignore[attr-defined]
        elif hypervisor == "stratovirt":
            hv.path = fake_binary(short_tmp, "stratovirt")  # type: ignore[attr-defined]
            hv.virtiofsd_conf.path = fake_binary(short_tmp, "virtiofsd")  # type: ignore[attr-defined]
        else:
            hv.path = fake_binary(short_tmp, "cloud_hypervisor")  # type: ignore[attr-defined]
            hv.virtiofsd.path = fake_binary(short_tmp, "virtiofsd")  # type: ignore[attr-defined]
        return cfg
    return make


@pytest.fixture
def fake_factory() -> Callable[[config.HypervisorConfig], VMFactory]:
    """``make(hv)``: the factory of ``hv``'s backend; one that needs KVM is told the host has it
    (:data:`FAKE_KVM`), QEMU probes the real host as it would."""
    def make(hv: config.HypervisorConfig) -> VMFactory:
        factory = hypervisors.backend(hv.type).factory
        return factory(hv, kvm=FAKE_KVM if getattr(factory, "needs_kvm", False) else None)
    return make


@pytest.fixture
def fake_qemu_config(short_tmp: str) -> str:
    """A config file for a ``vmm-sandboxer`` process running pods on the fake QEMU, with empty stand-ins for
    the guest kernel and initrd."""
    for name in ("vmlinux.bin", "kuasar.initrd"):
        open(os.path.join(short_tmp, name), "w").close()
    path = os.path.join(short_tmp, "config.toml")
    with open(path, "w") as f:
        f.write('[sandbox]\ncontainerd_ttrpc_address = ""\n[hypervisor]\nqemu_path = "%s"\nuse_vsock = false\n'
                'kernel_path = "%s/vmlinux.bin"\ninitrd_path = "%s/kuasar.initrd"\nboot_timeout_secs = 10\n'
                % (fake_binary(short_tmp, "qemu"), short_tmp, short_tmp))
    return path


@pytest.fixture
def short_tmp():
    path = tempfile.mkdtemp(prefix="kv", dir="/tmp")
    yield path
    subprocess.run(["umount", "-R", "-l", path], stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pod_netns():
    """A pod netns with veth ``eth0`` (10.231.0.2/24) whose peer sits in a second netns (10.231.0.1/24)."""
    tag = uuid.uuid4().hex[:8]
    pod, peer = "kvpod-" + tag, "kvpeer-" + tag
    script = f"""
set -e
ip netns add {pod}; ip netns add {peer}
ip link add kv{tag} type veth peer name kp{tag}
ip link set kv{tag} netns {pod}; ip link set kp{tag} netns {peer}
ip -n {pod} link set kv{tag} name eth0
ip -n {pod} addr add 10.231.0.2/24 dev eth0; ip -n {pod} link set eth0 up; ip -n {pod} link set lo up
ip -n {peer} addr add 10.231.0.1/24 dev kp{tag}; ip -n {peer} link set kp{tag} up; ip -n {peer} link set lo up
"""
    subprocess.run(["sh", "-c", script], check=True)
    yield {"pod": pod, "peer": peer, "path": f"/var/run/netns/{pod}"}
    for ns in (pod, peer):
        subprocess.run(["ip", "netns", "del", ns], check=False)


@pytest_asyncio.fixture
async def relay(short_tmp: str) -> AsyncIterator[TaskServer]:
    """A vmm-task-relay for ``<short_tmp>/vmm`` (the sandboxer's --dir); SIGKILLed afterwards."""
    directory = os.path.join(short_tmp, "vmm")
    os.makedirs(directory)
    server = await TaskServer.ensure(directory, RELAY)
    yield server
    await server.close()
    try:
        os.kill(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
