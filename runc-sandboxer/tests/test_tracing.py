"""--trace-endpoint: a real runc-sandboxer and its real task server send OpenTelemetry spans over OTLP/gRPC to a
receiver this test runs on loopback; the Sandbox API spans continue the engine's trace from its gRPC
``traceparent`` metadata and the Task API spans from its ttrpc metadata (as containerd sends them), the steps
are their children; without the flag OpenTelemetry is not even imported, in the sandboxer or the task server."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from google.protobuf import empty_pb2

from kuasar_shared import process
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc
from kuasar_shared.process_identity import is_same_process, start_time
from kuasar_shared.ttrpc import Client

BIN = os.path.dirname(sys.executable)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TASK_TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TASK_PARENT_ID = "b7ad6b7169203331"
TASK = "containerd.task.v3.Task"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []

    async def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.mark.parametrize("module", ["kuasar_runc_sandboxer.main", "kuasar_runc_task.main"])
def test_off_by_default_means_not_imported(module: str) -> None:
    code = "import sys, %s; print(any(m.startswith('opentelemetry') for m in sys.modules))" % module
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.asyncio
async def test_spans_reach_an_otlp_receiver_in_the_engines_trace(tmp_path, stop_pid, container_bundle,
                                                                 run_container) -> None:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    listen, directory = str(tmp_path / "runc.sock"), str(tmp_path / "dir")
    sandboxer = process.spawn([os.path.join(BIN, "runc-sandboxer"), "--listen", listen, "--dir", directory,
                               "--trace-endpoint", "http://127.0.0.1:%d" % port])
    channel = grpc.aio.insecure_channel("unix:" + listen)
    stub = sandbox_pb2_grpc.ControllerStub(channel)
    metadata = (("traceparent", "00-%s-%s-01" % (TRACE_ID, PARENT_ID)),)
    try:
        for _ in range(200):
            if os.path.exists(listen) or sandboxer.returncode is not None:
                break
            await asyncio.sleep(0.05)
        await stub.Create(sandbox_pb2.ControllerCreateRequest(sandbox_id="traced", sandboxer="runc"),
                          metadata=metadata, timeout=30)
        started = await stub.Start(sandbox_pb2.ControllerStartRequest(sandbox_id="traced", sandboxer="runc"),
                                   metadata=metadata, timeout=30)
        # a container through the task front, with the trace context in the ttrpc metadata as containerd sends it
        bundle = container_bundle("traced", started.pid, ["sleep", "1000"])
        client = await Client.connect_unix(os.path.join(directory, "task.sock"))
        task_metadata = {"containerd-namespace-ttrpc": "k8s.io",
                         "traceparent": "00-%s-%s-01" % (TASK_TRACE_ID, TASK_PARENT_ID)}
        try:
            await client.call(TASK, "Create", shim_pb2.CreateTaskRequest(id="traced-ctr", bundle=bundle),
                              shim_pb2.CreateTaskResponse, metadata=task_metadata)
            await client.call(TASK, "Start", shim_pb2.StartRequest(id="traced-ctr"), shim_pb2.StartResponse,
                              metadata=task_metadata)
            await client.call(TASK, "Kill", shim_pb2.KillRequest(id="traced-ctr", signal=9), empty_pb2.Empty)
            await client.call(TASK, "Wait", shim_pb2.WaitRequest(id="traced-ctr"), shim_pb2.WaitResponse,
                              timeout=30)
            await client.call(TASK, "Delete", shim_pb2.DeleteRequest(id="traced-ctr"), shim_pb2.DeleteResponse)
        finally:
            await client.close()
        await stub.Stop(sandbox_pb2.ControllerStopRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
        await stub.Shutdown(sandbox_pb2.ControllerShutdownRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Status(sandbox_pb2.ControllerStatusRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
    finally:
        await channel.close()
        sandboxer.send_signal(signal.SIGTERM)  # flushes the batch of spans before exiting
        await asyncio.wait_for(sandboxer.wait(), 30)
        with open(os.path.join(directory, "task-server.json")) as handle:
            record = json.load(handle)
        began = start_time(record["pid"])
        os.kill(record["pid"], signal.SIGTERM)  # the task server flushes its spans too
        for _ in range(300):
            if not is_same_process(record["pid"], began):
                break
            await asyncio.sleep(0.1)
        await server.stop(None)
        stop_pid(record["pid"])
        if record.get("front"):
            stop_pid(record["front"]["pid"])
    by_name = {}
    for span in receiver.spans:
        by_name.setdefault(span.name, []).append(span)
    for name in ("Controller/Create", "Controller/Start", "Controller/Stop", "Controller/Shutdown",
                 "Controller/Status", "pod start", "pod stop", "pod remove", "task server: remove containers"):
        assert name in by_name, sorted(by_name)
    (start,) = by_name["Controller/Start"]
    assert start.trace_id.hex() == TRACE_ID and start.parent_span_id.hex() == PARENT_ID
    (pod_start,) = by_name["pod start"]
    assert pod_start.trace_id == start.trace_id and pod_start.parent_span_id == start.span_id
    for step in ("holder spawn", "namespace pinning"):
        (child,) = by_name[step]
        assert child.parent_span_id == pod_start.span_id
    (task_create,) = by_name["Task/Create"]
    assert task_create.trace_id.hex() == TASK_TRACE_ID and task_create.parent_span_id.hex() == TASK_PARENT_ID
    (runtime_create,) = by_name["runtime create"]
    assert runtime_create.trace_id == task_create.trace_id and runtime_create.parent_span_id == task_create.span_id
    (task_start,) = by_name["Task/Start"]
    (runtime_start,) = by_name["runtime start"]
    assert runtime_start.parent_span_id == task_start.span_id
    (task_delete,) = by_name["Task/Delete"]
    assert task_delete.trace_id.hex() != TASK_TRACE_ID and not task_delete.parent_span_id
    (stop,) = by_name["Controller/Stop"]
    assert stop.trace_id.hex() != TRACE_ID and not stop.parent_span_id  # no traceparent: a trace of its own
    (status,) = by_name["Controller/Status"]
    codes = {a.key: a.value.int_value for a in status.attributes if a.key == "rpc.grpc.status_code"}
    assert codes == {"rpc.grpc.status_code": grpc.StatusCode.NOT_FOUND.value[0]}
