"""--metrics-listen: a real runc-sandboxer serves Prometheus metrics that move with a real pod and a real
container run through its real task server (whose series the sandboxer's endpoint carries), parsed with
prometheus-client's own parser and, where installed, ``promtool check metrics``; the task numbers are those
Task ``Stats`` answers; without the flag the library is not even imported, in the sandboxer or the task server."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid

import pytest
from google.protobuf import empty_pb2
from prometheus_client.parser import text_string_to_metric_families

from kuasar_shared import process
from kuasar_shared.api.cgroups.v1 import metrics_pb2 as cgroups_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.metrics import parse_metrics_address
from kuasar_shared.testing.conformance import SandboxApiClient
from kuasar_shared.ttrpc import Client

BIN = os.path.dirname(sys.executable)
TASK = "containerd.task.v3.Task"
PROMTOOL = shutil.which("promtool")


async def _scrape(path: str, target: bytes = b"/metrics") -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
    await writer.drain()
    reply = await reader.read()
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head.split(b"\r\n")[0], body


def _samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def test_address_forms() -> None:
    assert parse_metrics_address("unix:/run/m.sock") == ("/run/m.sock", None)
    assert parse_metrics_address("127.0.0.1:9610") == (None, ("127.0.0.1", 9610))
    assert parse_metrics_address("[::1]:9610") == (None, ("::1", 9610))
    for bad in ("unix:relative.sock", "9610", "localhost:", "host:99999"):
        with pytest.raises(InvalidArgument, match="--metrics-listen"):
            parse_metrics_address(bad)


@pytest.mark.parametrize("module", ["kuasar_runc_sandboxer.main", "kuasar_runc_task.main"])
def test_off_by_default_means_not_imported(module: str) -> None:
    code = "import sys, %s; print('prometheus_client' in sys.modules)" % module
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def _promtool_check(body: bytes) -> None:
    """``promtool check metrics`` finds no problem (lint warnings included) in ``body``, where installed."""
    if PROMTOOL is None:
        return
    done = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


@pytest.mark.asyncio
async def test_counters_and_pod_numbers_move_with_a_real_pod(tmp_path, stop_pid, container_bundle,
                                                             run_container) -> None:
    listen, directory, metrics = str(tmp_path / "runc.sock"), str(tmp_path / "dir"), str(tmp_path / "m.sock")
    parent = "/kuasar-test-metrics-" + uuid.uuid4().hex[:8]
    sandboxer = process.spawn([os.path.join(BIN, "runc-sandboxer"), "--listen", listen, "--dir", directory,
                               "--metrics-listen", "unix:" + metrics])
    api = SandboxApiClient("unix://" + listen)
    try:
        for _ in range(200):
            if os.path.exists(listen) or sandboxer.returncode is not None:
                break
            await asyncio.sleep(0.05)
        assert os.path.exists(listen) and os.path.exists(metrics)
        status, body = await _scrape(metrics)
        assert status == b"HTTP/1.0 200 OK"
        before = _samples(body)
        assert before[("kuasar_sandboxer_info", (("type", "runc"), ("version", "0.1.0")))] == 1.0

        config = cri_pb2.PodSandboxConfig(hostname="metrics-pod", linux=cri_pb2.LinuxPodSandboxConfig(
            cgroup_parent=parent, security_context=cri_pb2.LinuxSandboxSecurityContext(
                namespace_options=cri_pb2.NamespaceOption(network=cri_pb2.NODE))))
        request = sandbox_pb2.ControllerCreateRequest(sandbox_id="metrics-pod", sandboxer="runc")
        request.options.Pack(config, type_url_prefix="")
        request.options.type_url = "runtime.v1.PodSandboxConfig"
        await api.create(request)
        await api.start("metrics-pod")
        try:
            await api.status("no-such-pod")
        except Exception:
            pass
        body = (await _scrape(metrics))[1]
        _promtool_check(body)
        after = _samples(body)
        assert after[("kuasar_sandbox_api_requests_total", (("code", "OK"), ("method", "Start")))] == 1.0
        assert after[("kuasar_sandbox_api_requests_total", (("code", "NOT_FOUND"), ("method", "Status")))] == 1.0
        assert after[("kuasar_sandbox_api_request_duration_seconds_count", (("method", "Create"),))] == 1.0
        assert after[("kuasar_pods", (("state", "ready"),))] == 1.0
        # the pod cgroup exists, and has no container yet: its numbers are there, small
        for name in ("kuasar_pod_pids", "kuasar_pod_memory_usage_bytes", "kuasar_pod_cpu_seconds_total",
                     "kuasar_pod_oom_kills_total"):
            assert after[(name, (("pod", "metrics-pod"),))] >= 0
        assert (await _scrape(metrics, b"/other"))[0] == b"HTTP/1.0 404 Not Found"

        # a container through the task front, as containerd runs it: the task server's series move
        pod_pid = (await api.status("metrics-pod")).pid
        bundle = container_bundle("metrics-pod", pod_pid, ["sh", "-c", "sleep 1000 & sleep 1000 & wait"])
        client = await Client.connect_unix(os.path.join(directory, "task.sock"))
        try:
            await run_container(client, "metrics-ctr", bundle, "")
            with pytest.raises(NotFound):
                await client.call(TASK, "State", shim_pb2.StateRequest(id="no-such-ctr"), shim_pb2.StateResponse)
            for _ in range(100):  # until the shell has forked both sleeps
                reply = await client.call(TASK, "Stats", shim_pb2.StatsRequest(id="metrics-ctr"),
                                          shim_pb2.StatsResponse)
                stats = cgroups_pb2.Metrics.FromString(reply.stats.value)
                if stats.pids.current == 3:
                    break
                await asyncio.sleep(0.05)
            body = (await _scrape(metrics))[1]
            _promtool_check(body)
            running = _samples(body)
            await client.call(TASK, "Kill", shim_pb2.KillRequest(id="metrics-ctr", signal=9, all=True),
                              empty_pb2.Empty)
            await client.call(TASK, "Wait", shim_pb2.WaitRequest(id="metrics-ctr"), shim_pb2.WaitResponse,
                              timeout=30)
            await client.call(TASK, "Delete", shim_pb2.DeleteRequest(id="metrics-ctr"), shim_pb2.DeleteResponse)
        finally:
            await client.close()
        for method in ("Create", "Start"):
            assert running[("kuasar_task_api_requests_total", (("code", "OK"), ("method", method)))] == 1.0
            assert running[("kuasar_task_api_request_duration_seconds_count", (("method", method),))] == 1.0
        assert running[("kuasar_task_api_requests_total", (("code", "OK"), ("method", "Stats")))] >= 1.0
        assert running[("kuasar_task_api_requests_total", (("code", "NOT_FOUND"), ("method", "State")))] == 1.0
        assert running[("kuasar_containers", (("state", "running"),))] == 1.0
        assert running[("kuasar_metrics_source_up", (("source", "task-server"),))] == 1.0
        ctr = (("container", "metrics-ctr"), ("pod", "metrics-pod"))
        assert running[("kuasar_container_pids", ctr)] == stats.pids.current == 3  # sh and two sleeps
        assert running[("kuasar_container_cpu_seconds_total", ctr)] >= stats.cpu.usage.total / 1e9 > 0
        assert running[("kuasar_container_memory_usage_bytes", ctr)] > 0
        done = _samples((await _scrape(metrics))[1])
        for method in ("Kill", "Wait", "Delete"):
            assert done[("kuasar_task_api_requests_total", (("code", "OK"), ("method", method)))] == 1.0
        assert done[("kuasar_containers", (("state", "running"),))] == 0.0
        assert not any(name.startswith("kuasar_container_") for name, _ in done)

        await api.stop("metrics-pod")
        await api.shutdown("metrics-pod")
        gone = _samples((await _scrape(metrics))[1])
        assert not any(labels == (("pod", "metrics-pod"),) for _, labels in gone)
    finally:
        for call in (api.stop, api.shutdown):  # a failed assertion must not leave the pod behind
            try:
                await call("metrics-pod")
            except Exception:
                pass
        await api.close()
        sandboxer.send_signal(signal.SIGTERM)
        await asyncio.wait_for(sandboxer.wait(), 20)
        with open(os.path.join(directory, "task-server.json")) as handle:
            record = json.load(handle)
        stop_pid(record["pid"])
        if record.get("front"):
            stop_pid(record["front"]["pid"])
        for hierarchy in os.listdir("/sys/fs/cgroup"):
            leftover = os.path.join("/sys/fs/cgroup", hierarchy, parent.strip("/"))
            if os.path.isdir(leftover):
                os.rmdir(leftover)
    assert not os.path.exists(metrics)
