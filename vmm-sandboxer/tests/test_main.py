"""The vmm-sandboxer process as shipped (``main``): the shared serving phase, so ``--metrics-listen`` works
for vmm too, with the vmm series (boot to agent, the VMM's PSS); scraped while it runs a pod on the fake QEMU
(``fakes/fake_qemu.py``, a real process)."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

from prometheus_client.parser import text_string_to_metric_families

from kuasar_shared import process
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.testing.conformance import SandboxApiClient
from kuasar_vmm_sandboxer.main import socket_room_warning

BIN = os.path.dirname(sys.executable)


async def _scrape(path: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    reply = await reader.read()
    writer.close()
    body = reply.partition(b"\r\n\r\n")[2].decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


async def test_metrics_of_a_pod_on_the_fake_qemu(short_tmp: str, fake_qemu_config: str) -> None:
    listen, directory = os.path.join(short_tmp, "vmm.sock"), os.path.join(short_tmp, "vmm")
    metrics = os.path.join(short_tmp, "m.sock")
    sandboxer = process.spawn([os.path.join(BIN, "vmm-sandboxer"), "--listen", listen, "--dir", directory,
                               "--config", fake_qemu_config, "--metrics-listen", "unix:" + metrics])
    api = SandboxApiClient("unix://" + listen)
    try:
        for _ in range(400):
            if os.path.exists(listen) or sandboxer.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert os.path.exists(metrics)
        before = await _scrape(metrics)
        assert before[("kuasar_sandboxer_info", (("type", "vmm"), ("version", "0.1.0")))] == 1.0
        await api.create(sandbox_pb2.ControllerCreateRequest(sandbox_id="metrics-pod", sandboxer="vmm"))
        await api.start("metrics-pod")
        after = await _scrape(metrics)
        assert after[("kuasar_sandbox_api_requests_total", (("code", "OK"), ("method", "Start")))] == 1.0
        assert after[("kuasar_pods", (("state", "ready"),))] == 1.0
        assert after[("kuasar_pod_memory_usage_bytes", (("pod", "metrics-pod"),))] > 0  # the fake QEMU's
        assert after[("kuasar_vm_boot_to_agent_seconds_count", ())] == 1.0
        assert after[("kuasar_vm_boot_to_agent_seconds_sum", ())] > 0
        assert after[("kuasar_vmm_memory_pss_bytes", (("pod", "metrics-pod"),))] > 1 << 20  # a Python process
        await api.stop("metrics-pod")
        stopped = await _scrape(metrics)
        assert ("kuasar_vmm_memory_pss_bytes", (("pod", "metrics-pod"),)) not in stopped
        await api.shutdown("metrics-pod")
    finally:
        for call in (api.stop, api.shutdown):  # a failed assertion must not leave the pod behind
            try:
                await call("metrics-pod")
            except Exception:
                pass
        await api.close()
        sandboxer.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sandboxer.wait(), 20)
        try:
            with open(os.path.join(directory, "task-server.json")) as f:
                os.kill(json.load(f)["pid"], signal.SIGKILL)
        except (OSError, KeyError, ValueError):
            pass
    assert not os.path.exists(metrics)


async def test_a_dir_too_long_for_containerds_pod_sockets_is_named_at_start(tmp_path, fake_qemu_config: str) -> None:
    """QEMU would fail each start of a pod with a 64-character id on a socket path over 107 bytes: the sandboxer
    says so in its log at start, and still serves (kuasar-ctl's shorter ids fit)."""
    assert socket_room_warning("/tmp/" + "d" * 23) is None
    # longer than the 28 bytes containerd's pods leave, short enough for the relay's own socket
    base = tempfile.mkdtemp(prefix="kv-" + "d" * 30, dir="/tmp")
    long_dir, listen = os.path.join(base, "dir"), os.path.join(base, "s.sock")
    log = tmp_path / "sandboxer.log"
    with open(log, "wb") as out:
        sandboxer = process.spawn([os.path.join(BIN, "vmm-sandboxer"), "--listen", listen, "--dir", long_dir,
                                   "--config", fake_qemu_config], stdout=out.fileno(), stderr=out.fileno())
    try:
        for _ in range(400):
            if os.path.exists(listen) or sandboxer.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert os.path.exists(listen) and sandboxer.returncode is None
        text = log.read_text()
        assert f"--dir {long_dir} is too long for containerd's pods" in text and "virtiofs.sock" in text
    finally:
        sandboxer.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sandboxer.wait(), 20)
        try:  # the relay outlives its sandboxer by design
            with open(os.path.join(long_dir, "task-server.json")) as f:
                os.kill(json.load(f)["pid"], signal.SIGKILL)
        except (OSError, KeyError, ValueError):
            pass
        shutil.rmtree(base, ignore_errors=True)
