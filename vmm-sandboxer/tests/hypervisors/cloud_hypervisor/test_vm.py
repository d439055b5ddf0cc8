"""CloudHypervisorVM against the fake cloud-hypervisor (``fakes/fake_cloud_hypervisor.py``): virtiofsd
first, start (``vmm.ping`` answers), the guest agent over hybrid vsock, the API request sequence of a
graceful stop (``vm.shutdown``, ``vmm.shutdown``), re-attach, and a command line it would refuse. Not a
real Cloud Hypervisor: none can run here."""
from __future__ import annotations

import asyncio
import os

import pytest
from google.protobuf import empty_pb2

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.errors import Internal, KuasarError
from kuasar_shared.ttrpc import Client
from kuasar_vmm_sandboxer.relay.names import parse_hvsock
from kuasar_vmm_sandboxer.vm import VMSpec


async def _check_over_hvsock(address: str) -> None:
    path, port = parse_hvsock(address)
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"CONNECT %d\n" % port)
    assert (await reader.readline()).startswith(b"OK ")
    client = Client(reader, writer)
    try:
        await client.call("grpc.SandboxService", "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, timeout=5)
    finally:
        await client.close()


async def test_start_agent_stop_sequence(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("cloud-hypervisor").hypervisor
    factory = fake_factory(hv)
    spec = VMSpec("ch1", os.path.join(short_tmp, "ch1"), 1, 256)
    os.makedirs(spec.pod_dir)
    vm = factory.create(spec)
    pid = await vm.start()
    try:
        assert vm.virtiofsd_pid and (await vm.pids()).affiliated == (vm.virtiofsd_pid,)
        await vm.ping()
        await _check_over_hvsock(vm.agent_address)
        again = await factory.recover(spec, vm.record())
        await again.ping()
    finally:
        await vm.stop(force=False)
    assert not vm.alive() and vm._proc is not None and vm._proc.returncode == 0
    with open(os.path.join(spec.pod_dir, "cloud-hypervisor.log")) as f:
        requests = [line.split(" ", 1)[1].strip() for line in f if line.startswith("API ")]
    assert requests[-2:] == ["PUT /api/v1/vm.shutdown", "PUT /api/v1/vmm.shutdown"]
    assert set(requests[:-2]) == {"GET /api/v1/vmm.ping"} and pid


async def test_refused_command_line_fails_start_with_its_message(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("cloud-hypervisor").hypervisor
    hv.kernel_path = os.path.join(short_tmp, "no-such-kernel")
    spec = VMSpec("ch2", os.path.join(short_tmp, "ch2"), 1, 256)
    os.makedirs(spec.pod_dir)
    vm = fake_factory(hv).create(spec)
    with pytest.raises(Internal, match="no-such-kernel"):
        await vm.start()
    assert not vm.alive() and vm.virtiofsd_pid and not os.path.exists("/proc/%d" % vm.virtiofsd_pid)


async def test_a_missing_binary_leaves_no_virtiofsd(fake_hypervisor, fake_factory, short_tmp):
    hv = fake_hypervisor("cloud-hypervisor").hypervisor
    hv.path = os.path.join(short_tmp, "no-cloud-hypervisor")
    spec = VMSpec("ch3", os.path.join(short_tmp, "ch3"), 1, 256)
    os.makedirs(spec.pod_dir)
    vm = fake_factory(hv).create(spec)
    with pytest.raises(KuasarError, match="no-cloud-hypervisor"):
        await vm.start()
    for _ in range(100):
        if not os.path.exists("/proc/%d" % vm.virtiofsd_pid):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("virtiofsd %d outlived the failed start" % vm.virtiofsd_pid)
