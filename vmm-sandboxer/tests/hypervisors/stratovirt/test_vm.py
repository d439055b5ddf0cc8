"""StratoVirtVM against the fake stratovirt (``fakes/fake_stratovirt.py``): start (QMP ready, pidfile,
vhost_user_fs after StratoVirt), ping, vCPU threads from ``query-cpus``, stop by QMP ``quit``, re-attach,
and a command line StratoVirt would refuse. Not a real StratoVirt: none can run here."""
from __future__ import annotations

import os

import pytest

from kuasar_shared.errors import Internal
from kuasar_vmm_sandboxer.vm import VMSpec


async def test_start_ping_pids_stop(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("stratovirt").hypervisor
    factory = fake_factory(hv)
    spec = VMSpec("sv1", os.path.join(short_tmp, "sv1"), 2, 256)
    os.makedirs(spec.pod_dir)
    vm = factory.create(spec)
    pid = await vm.start()
    try:
        with open(os.path.join(spec.pod_dir, "sandbox-sv1.pid")) as f:
            assert int(f.read()) == pid
        await vm.ping()
        pids = await vm.pids()
        assert (pids.vmm, pids.vcpus) == (pid, (pid, pid)) and pids.affiliated == (vm.virtiofsd_pid,)
        again = await factory.recover(spec, vm.record())
        await again.ping()
    finally:
        await vm.stop(force=False)
    assert not vm.alive()
    assert vm._proc is not None and vm._proc.returncode == 0, "quit ends StratoVirt with status 0"


async def test_refused_command_line_fails_start_with_its_message(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("stratovirt").hypervisor
    hv.machine_type = "q35"  # the config check would refuse it; the fake refuses vhost-user-fs without mem-share
    spec = VMSpec("sv2", os.path.join(short_tmp, "sv2"), 1, 256)
    os.makedirs(spec.pod_dir)
    vm = fake_factory(hv).create(spec)
    with pytest.raises(Internal, match="mem-share=on"):
        await vm.start()
    assert not vm.alive()


async def test_microvm_has_one_port_the_agents(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("stratovirt").hypervisor
    hv.machine_type = "microvm,mem-share=on"
    spec = VMSpec("sv3", os.path.join(short_tmp, "sv3"), 1, 256)
    os.makedirs(spec.pod_dir)
    vm = fake_factory(hv).create(spec)
    await vm.start()
    try:
        await vm.ping()
    finally:
        await vm.stop(force=True)
    assert not vm.alive()
