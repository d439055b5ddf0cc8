"""The real guest under QEMU TCG: vmm-task as PID 1 answers ttrpc over the virtio-serial mux.

The host side here is the bare minimum (no sandboxer): QEMU with the agent port and a 9p share,
one MuxConnection, ttrpc Check / SetupSandbox / ExecVMProcess on separate channels.
"""
import asyncio
import json
import os
import shutil
import time

import pytest
from google.protobuf import empty_pb2

from kuasar_shared import process
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.ttrpc import Client
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_task.image.build import INITRD_NAME, KERNEL_NAME

SVC = "grpc.SandboxService"
BOOT_TIMEOUT = 180  # TCG on a loaded 2-core machine


@pytest.fixture
async def vm(guest_image, tmp_path):
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed")
    image_dir, _ = guest_image
    share = tmp_path / "shared"
    share.mkdir()
    (share / "hostname").write_text("vm-pod\n")
    sock = str(tmp_path / "agent.sock")
    # the vmm-sandboxer's TCG CPU: rdrand seeds the guest RNG at boot (random.trust_cpu=on)
    argv = ["qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "qemu64,+rdrand", "-m", "512",
            "-smp", "1", "-nodefaults",
            "-no-user-config", "-nographic", "-serial", f"file:{tmp_path}/console.log",
            "-kernel", os.path.join(image_dir, KERNEL_NAME), "-initrd", os.path.join(image_dir, INITRD_NAME),
            "-append", "console=ttyS0 quiet loglevel=3 panic=-1 random.trust_cpu=on task.log_level=debug "
            "task.sharefs_type=9p",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,path={sock},server=on,wait=off,id=agent",
            "-device", "virtserialport,bus=vser0.0,chardev=agent,name=kuasar.agent",
            "-fsdev", f"local,id=fs0,path={share},security_model=none",
            "-device", "virtio-9p-pci,fsdev=fs0,mount_tag=kuasar", "-no-reboot"]
    started = time.monotonic()
    qemu = process.spawn(argv)
    mux = None
    try:
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(sock)
                break
            except OSError:
                assert qemu.returncode is None, "qemu exited: " + (tmp_path / "console.log").read_text()[-2000:]
                assert time.monotonic() - started < 10, "qemu never created the agent socket"
                await asyncio.sleep(0.005)
        mux = MuxConnection(reader, writer, is_host=True)
        yield mux, share, started, tmp_path
    finally:
        if mux is not None:
            await mux.close()
        qemu.kill()
        await qemu.wait()


async def test_boot_check_setup_exec(vm):
    mux, share, started, tmp_path = vm
    client = Client(*(await mux.open()))
    try:
        await client.call(SVC, "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty, timeout=BOOT_TIMEOUT)
    except Exception:
        print((tmp_path / "console.log").read_text()[-4000:])
        raise
    boot = time.monotonic() - started
    req = sandbox_pb2.SetupSandboxRequest()
    req.config.type_url = "PodSandboxConfig"
    req.config.value = json.dumps({"hostname": "ignored", "linux": {
        "sysctls": {"net.ipv4.ip_unprivileged_port_start": "80"},
        "security_context": {"namespace_options": {"pid": 0}}}}).encode()
    setup = await Client(*(await mux.open())).call(SVC, "SetupSandbox", req, empty_pb2.Empty, timeout=60)
    assert setup == empty_pb2.Empty()
    exec_client = Client(*(await mux.open()))
    command = ("cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /run/sandbox-ns; "
               "nsenter --uts=/run/sandbox-ns/uts hostname; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
               "cat /run/kuasar/state/hostname; runc --version | head -1; read x; echo stdin=$x")
    resp = await exec_client.call(SVC, "ExecVMProcess",
                                  sandbox_pb2.ExecVMProcessRequest(command=command, stdin=b"fed\n"),
                                  sandbox_pb2.ExecVMProcessResponse, timeout=60)
    out = resp.out.splitlines()
    assert "/sbin/init" in out[0]
    assert out[1:8] == ["ipc", "pid", "uts", "vm-pod", "80", "vm-pod", "runc version 1.1.5+ds1"]
    assert out[8] == "stdin=fed"
    with pytest.raises(Exception, match="already set up"):
        await exec_client.call(SVC, "SetupSandbox", req, empty_pb2.Empty, timeout=60)
    print(f"boot-to-agent {boot:.2f}s")
    await client.close()
    await exec_client.close()
    assert mux.channel_count <= 1  # closed channels are forgotten (the SetupSandbox client still open)
