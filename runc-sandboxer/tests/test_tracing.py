"""--trace-endpoint: a real runc-sandboxer sends OpenTelemetry spans over OTLP/gRPC to a receiver this test
runs on loopback; the Sandbox API spans continue the engine's trace from its ``traceparent`` metadata, the
lifecycle steps are their children; without the flag OpenTelemetry is not even imported."""
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

from kuasar_shared import process
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

BIN = os.path.dirname(sys.executable)
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP trace collector that keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list = []

    async def Export(self, request, context):  # noqa: N802 (the gRPC method name)
        for resource in request.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_off_by_default_means_not_imported() -> None:
    code = "import sys, kuasar_runc_sandboxer.main; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


@pytest.mark.asyncio
async def test_spans_reach_an_otlp_receiver_in_the_engines_trace(tmp_path, stop_pid) -> None:
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
        await stub.Start(sandbox_pb2.ControllerStartRequest(sandbox_id="traced", sandboxer="runc"),
                         metadata=metadata, timeout=30)
        await stub.Stop(sandbox_pb2.ControllerStopRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
        await stub.Shutdown(sandbox_pb2.ControllerShutdownRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Status(sandbox_pb2.ControllerStatusRequest(sandbox_id="traced", sandboxer="runc"), timeout=30)
    finally:
        await channel.close()
        sandboxer.send_signal(signal.SIGTERM)  # flushes the batch of spans before exiting
        await asyncio.wait_for(sandboxer.wait(), 30)
        await server.stop(None)
        with open(os.path.join(directory, "task-server.json")) as handle:
            record = json.load(handle)
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
    (stop,) = by_name["Controller/Stop"]
    assert stop.trace_id.hex() != TRACE_ID and not stop.parent_span_id  # no traceparent: a trace of its own
    (status,) = by_name["Controller/Status"]
    codes = {a.key: a.value.int_value for a in status.attributes if a.key == "rpc.grpc.status_code"}
    assert codes == {"rpc.grpc.status_code": grpc.StatusCode.NOT_FOUND.value[0]}
