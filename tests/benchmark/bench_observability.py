"""What metrics and tracing cost a sandboxer: its PSS (and its task server's, which the sandboxer starts with
the same settings) and the pod start (Controller Create + Start) p50, with both off, with ``--metrics-listen``,
and with ``--metrics-listen`` + ``--trace-endpoint`` (to an OTLP receiver in this process), same run, same
machine. Real runc-sandboxer and pods (no containers); as root.

    .venv/bin/python tests/benchmark/bench_observability.py [--pods 30]
        [--out tests/benchmark/results/observability.json]

Targets (issue 20): enabled, <= 2 MB PSS and <= 2 ms start p50 more than disabled.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from kuasar_shared import process
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

BIN = os.path.dirname(sys.executable)
HERE = os.path.dirname(os.path.abspath(__file__))


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    async def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.spans += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def cpu_ms(pid: int) -> float:
    """User + system CPU time of ``pid``: the load-independent cost (wall times here move with the machine's load)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


def pss_kb(pid: int) -> int:
    with open("/proc/%d/smaps_rollup" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Pss:"))


async def one_mode(mode: str, pods: int, otlp_port: int) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="kbobs", dir="/tmp")
    listen, directory = os.path.join(work, "s.sock"), os.path.join(work, "d")
    argv = [os.path.join(BIN, "runc-sandboxer"), "--listen", listen, "--dir", directory]
    if mode in ("metrics", "metrics+tracing"):
        argv += ["--metrics-listen", "unix:" + os.path.join(work, "m.sock")]
    if mode == "metrics+tracing":
        argv += ["--trace-endpoint", "http://127.0.0.1:%d" % otlp_port]
    sandboxer = process.spawn(argv)
    channel = grpc.aio.insecure_channel("unix:" + listen)
    stub = sandbox_pb2_grpc.ControllerStub(channel)
    ids = ["obs-%s-%d" % (mode.replace("+", "-"), i) for i in range(pods)]
    latencies = []
    try:
        while not os.path.exists(listen):
            if sandboxer.returncode is not None:
                raise RuntimeError("runc-sandboxer exited")
            await asyncio.sleep(0.02)
        cpu_before = cpu_ms(sandboxer.pid)
        for pod in ids:
            begin = time.perf_counter()
            await stub.Create(sandbox_pb2.ControllerCreateRequest(sandbox_id=pod, sandboxer="runc"), timeout=30)
            await stub.Start(sandbox_pb2.ControllerStartRequest(sandbox_id=pod, sandboxer="runc"), timeout=30)
            latencies.append((time.perf_counter() - begin) * 1000)
        cpu_per_start = (cpu_ms(sandboxer.pid) - cpu_before) / pods
        await asyncio.sleep(1.5)  # a batch of spans has gone out, a scrape-free steady state
        pss = pss_kb(sandboxer.pid)
        with open(os.path.join(directory, "task-server.json")) as f:
            task_pss = pss_kb(json.load(f)["pid"])
    finally:
        for pod in ids:
            for call, req in (("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=pod, sandboxer="runc")),
                              ("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=pod, sandboxer="runc"))):
                try:
                    await getattr(stub, call)(req, timeout=30)
                except grpc.aio.AioRpcError:
                    pass
        await channel.close()
        sandboxer.send_signal(signal.SIGTERM)
        await sandboxer.wait()
        with open(os.path.join(directory, "task-server.json")) as f:
            record = json.load(f)
        for pid in (record["pid"], (record.get("front") or {}).get("pid")):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        shutil.rmtree(work, ignore_errors=True)
    return {"mode": mode, "pods": pods, "start_p50_ms": round(statistics.median(latencies), 2),
            "start_p90_ms": round(sorted(latencies)[int(0.9 * (len(latencies) - 1))], 2),
            "sandboxer_cpu_ms_per_start": round(cpu_per_start, 2), "sandboxer_pss_kb": pss,
            "task_server_pss_kb": task_pss}


async def run(pods: int) -> dict[str, Any]:
    receiver = Receiver()
    server = grpc.aio.server()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        results = [await one_mode(mode, pods, port) for mode in ("off", "metrics", "metrics+tracing")]
    finally:
        await server.stop(None)
    off = results[0]
    for r in results[1:]:
        r["extra_pss_kb"] = r["sandboxer_pss_kb"] - off["sandboxer_pss_kb"]
        r["extra_task_server_pss_kb"] = r["task_server_pss_kb"] - off["task_server_pss_kb"]
        r["extra_start_p50_ms"] = round(r["start_p50_ms"] - off["start_p50_ms"], 2)
        r["extra_cpu_ms_per_start"] = round(r["sandboxer_cpu_ms_per_start"] - off["sandboxer_cpu_ms_per_start"], 2)
    return {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "loadavg_1m": os.getloadavg()[0],
            "spans_received": receiver.spans, "targets": {"extra_pss_kb": 2048, "extra_start_p50_ms": 2.0},
            "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=30)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "observability.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_observability: run as root", file=sys.stderr)
        return 2
    report = asyncio.run(run(args.pods))
    for r in report["results"]:
        print("%-16s start p50 %6.2f ms (p90 %6.2f), sandboxer CPU %5.2f ms/start, PSS %5.1f MiB, task server "
              "PSS %5.1f MiB%s" % (
                  r["mode"], r["start_p50_ms"], r["start_p90_ms"], r["sandboxer_cpu_ms_per_start"],
                  r["sandboxer_pss_kb"] / 1024, r["task_server_pss_kb"] / 1024,
                  "" if "extra_pss_kb" not in r else "  (%+.2f MiB, task server %+.2f MiB, %+.2f ms CPU)" % (
                      r["extra_pss_kb"] / 1024, r["extra_task_server_pss_kb"] / 1024, r["extra_cpu_ms_per_start"])))
    print("spans received: %d; targets: +2 MiB, +2 ms" % report["spans_received"])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
