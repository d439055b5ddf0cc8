"""Task front benchmark (issue 14): what the front in front of a task server costs, in one run.

    .venv/bin/python tests/benchmark/bench_taskfront.py [--calls 2000] [--kills 10]
        [--out tests/benchmark/results/taskfront.json]

A real runc-sandboxer starts its task front and runc-task in a temp dir (as root). Measured:
- memory: the front's PSS/RSS idle and with 16 idle engine connections (each also one connection of
  the front to runc-task), runc-task's RSS in both cases; then 16 connections that each send one
  4 MiB request at once (a flood the bounds are for): runc-task's RSS growth and the front's RSS;
- per-call overhead: the same unary call straight to runc-task's private socket and through the front,
  interleaved in batches; a read (State of an unknown container) and a call with effects (Kill of an
  unknown container, which the front tags and runc-task journals);
- restart gap: kill -9 of runc-task, then a State through the front, timed until it is answered by the
  successor (the engine's call is held, not failed).
Targets (issue 14): <= 5 MB PSS per sandbox type, <= 2 ms extra per call. Prints the JSON and writes it.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from google.protobuf import empty_pb2

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from procstats import latency_summary, smaps  # noqa: E402

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2  # noqa: E402
from kuasar_shared.api.ttrpc import request_pb2  # noqa: E402
from kuasar_shared.ttrpc import framing  # noqa: E402
from kuasar_shared.errors import NotFound  # noqa: E402
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE  # noqa: E402
from kuasar_shared.ttrpc import Client  # noqa: E402

BIN = os.path.dirname(sys.executable)
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "taskfront.json")
CALLS = {
    "read": ("State", shim_pb2.StateRequest(id="absent"), shim_pb2.StateResponse),
    "with_effects": ("Kill", shim_pb2.KillRequest(id="absent", signal=9), empty_pb2.Empty),
}


def _record(directory: str) -> dict[str, Any]:
    with open(os.path.join(directory, "task-server.json")) as f:
        return json.load(f)


async def _wait_for_socket(path: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        await asyncio.sleep(0.05)


async def _call(client: Client, name: str) -> float:
    method, request, response = CALLS[name]
    started = time.perf_counter()
    try:
        await client.call(TASK_SERVICE, method, request, response, timeout=30)
    except NotFound:
        pass
    return (time.perf_counter() - started) * 1000


async def _latencies(front: Client, direct: Client, name: str, calls: int) -> dict[str, Any]:
    by_path: dict[str, list[float]] = {"direct": [], "front": []}
    for _ in range(20):  # warm both paths
        await _call(front, name)
        await _call(direct, name)
    batch = 50
    for _ in range(calls // batch):
        for path, client in (("direct", direct), ("front", front)):
            for _ in range(batch):
                by_path[path].append(await _call(client, name))
    direct_s, front_s = latency_summary(by_path["direct"]), latency_summary(by_path["front"])
    return {"direct": direct_s, "front": front_s, "extra_ms_p50": front_s["p50"] - direct_s["p50"],
            "extra_ms_p90": front_s["p90"] - direct_s["p90"], "extra_ms_mean": front_s["mean"] - direct_s["mean"]}


async def _flood(path: str, connections: int) -> None:
    """``connections`` connections each send one request of just under 4 MiB, then read its answer."""
    payload = shim_pb2.UpdateTaskRequest(id="flood", annotations={"k": "x" * ((4 << 20) - 512)}).SerializeToString()
    frame = framing.encode(1, framing.TYPE_REQUEST, 0, request_pb2.Request(
        service=TASK_SERVICE, method="Update", payload=payload).SerializeToString())
    pairs = [await asyncio.open_unix_connection(path) for _ in range(connections)]
    for _, writer in pairs:
        writer.write(frame)
    await asyncio.gather(*(writer.drain() for _, writer in pairs))
    await asyncio.gather(*(framing.read_frame(reader) for reader, _ in pairs))
    for _, writer in pairs:
        writer.close()


async def _restart_gaps(directory: str, front: Client, kills: int) -> dict[str, float]:
    gaps = []
    for _ in range(kills):
        old = _record(directory)["pid"]
        os.kill(old, signal.SIGKILL)
        started = time.perf_counter()
        await _call(front, "read")
        gaps.append((time.perf_counter() - started) * 1000)
        while _record(directory)["pid"] == old:
            await asyncio.sleep(0.05)
    return latency_summary(gaps)


async def measure(directory: str, calls: int, kills: int) -> dict[str, Any]:
    front_sock, backend_sock = os.path.join(directory, "task.sock"), os.path.join(directory, "task-backend.sock")
    await _wait_for_socket(front_sock)
    await _wait_for_socket(backend_sock)
    record = _record(directory)
    front_pid = record["front"]["pid"]
    await asyncio.sleep(1.0)
    result: dict[str, Any] = {"front_idle": smaps(front_pid).as_dict(),
                              "task_server_idle": smaps(record["pid"]).as_dict()}
    idle = [await Client.connect_unix(front_sock) for _ in range(16)]
    for client in idle:
        await _call(client, "read")
    await asyncio.sleep(0.5)
    result["front_16_connections"] = smaps(front_pid).as_dict()
    result["task_server_16_connections"] = smaps(_record(directory)["pid"]).as_dict()
    for client in idle:
        await client.close()
    before = smaps(_record(directory)["pid"]).rss_kb
    await _flood(front_sock, 16)
    await asyncio.sleep(0.5)
    result["flood_16x4MiB"] = {"task_server_rss_growth_kb": smaps(_record(directory)["pid"]).rss_kb - before,
                               "front_after": smaps(front_pid).as_dict()}

    front, direct = await Client.connect_unix(front_sock), await Client.connect_unix(backend_sock)
    try:
        result["calls_ms"] = {name: await _latencies(front, direct, name, calls) for name in CALLS}
    finally:
        await direct.close()
    try:
        result["restart_gap_ms"] = await _restart_gaps(directory, front, kills)
        result["engine_connection_survived"] = not front.closed
    finally:
        await front.close()
    worst = max(result["calls_ms"][n]["extra_ms_p50"] for n in CALLS)
    result["targets"] = {"front_pss_kb_max": 5 * 1024, "front_pss_kb": result["front_16_connections"]["pss_kb"],
                         "extra_ms_per_call_max": 2.0, "extra_ms_per_call_p50": worst,
                         "met": result["front_16_connections"]["pss_kb"] <= 5 * 1024 and worst <= 2.0}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per path and kind (default 2000)")
    parser.add_argument("--kills", type=int, default=10, help="kill -9 of the task server (default 10)")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("runc"):
        print("needs root and runc", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="kbench-front-", dir="/tmp")
    directory = os.path.join(work, "d")
    log = open(os.path.join(work, "sandboxer.log"), "wb")
    sandboxer = subprocess.Popen([os.path.join(BIN, "runc-sandboxer"), "--listen", os.path.join(work, "runc.sock"),
                                  "--dir", directory, "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    try:
        result = asyncio.run(measure(directory, args.calls, args.kills))
    finally:
        sandboxer.send_signal(signal.SIGTERM)
        sandboxer.wait(30)
        record = _record(directory) if os.path.exists(os.path.join(directory, "task-server.json")) else {}
        for pid in (record.get("pid"), record.get("front", {}).get("pid")):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    result["when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    result["python"] = sys.version.split()[0]
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
