"""Restart downtime of a sandboxer, as ``systemctl restart kuasar-<type>`` causes it, with pods running and
an engine holding one Controller.Wait per pod. Real sandboxers (runc, vmm), real pods; as root.

    .venv/bin/python tests/benchmark/bench_restart.py [--types runc,vmm] [--pods runc=10,vmm=2] [--rounds 10]
                                                      [--out tests/benchmark/results/restart.json]

One round = SIGTERM to the running sandboxer (t0) -> it exits (``stop_ms``) -> a new one is spawned, as
systemd does after the old main PID is gone -> the first Controller.Platform answered on the socket
(``downtime_ms``, from t0; ``start_ms`` is the new process's part). The Waits are held like containerd's proxy
controller does: a Wait that fails UNAVAILABLE is retried with a back-off from 128 ms, any other error counts
as a pod the engine would have recorded as exited (``waits_lost``). After every round each pod must still be
Ready. Target (issue 12): downtime <= 300 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any, Optional

import grpc

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2, sandbox_pb2_grpc

BIN = os.path.dirname(sys.executable)
HERE = os.path.dirname(os.path.abspath(__file__))
TARGET_MS = 300.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class EngineWaits:
    """One Controller.Wait per pod, re-sent on UNAVAILABLE like containerd 2.3's remoteSandboxController."""

    def __init__(self, stub: sandbox_pb2_grpc.ControllerStub, sandboxer: str) -> None:
        self.stub = stub
        self.sandboxer = sandboxer
        self.lost: list[str] = []
        self.retries = 0
        self._tasks: list["asyncio.Task[None]"] = []

    def hold(self, pod: str) -> None:
        self._tasks.append(asyncio.ensure_future(self._wait(pod)))

    async def _wait(self, pod: str) -> None:
        backoff = 0.128
        while True:
            try:
                await self.stub.Wait(sandbox_pb2.ControllerWaitRequest(sandbox_id=pod, sandboxer=self.sandboxer))
                self.lost.append("%s: Wait returned while the pod runs" % pod)
                return
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    self.lost.append("%s: %s %s" % (pod, err.code().name, err.details()))
                    return
            self.retries += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 4.096)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Daemon:
    """A sandboxer of one type on a private socket and dir (its task server outlives it, by design)."""

    def __init__(self, sandbox_type: str, work: str, config: Optional[str]) -> None:
        self.argv = [os.path.join(BIN, "%s-sandboxer" % sandbox_type), "--listen", os.path.join(work, "s.sock"),
                     "--dir", os.path.join(work, "d"), "--log-level", "info"]
        if config:
            self.argv += ["--config", config]
        self.socket = os.path.join(work, "s.sock")
        self.log = os.path.join(work, "sandboxer.log")
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


async def platform_answers(socket: str, sandboxer: str, deadline: float) -> None:
    """Poll with a fresh connection each time: the socket's answer, not a client's reconnect back-off
    (grpc's starts at 1 s, and containerd's dialer keeps that default), is what is measured."""
    while True:
        if os.path.exists(socket):
            # a local subchannel pool: grpc shares subchannels between channels to one target, and the
            # engine channel's back-off would otherwise delay this probe too
            async with grpc.aio.insecure_channel("unix:" + socket,
                                                 options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                stub = sandbox_pb2_grpc.ControllerStub(channel)
                try:
                    await stub.Platform(sandbox_pb2.ControllerPlatformRequest(sandbox_id="", sandboxer=sandboxer),
                                        timeout=1, wait_for_ready=False)
                    return
                except grpc.aio.AioRpcError as err:
                    if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        return  # answered (an error about the empty id is an answer)
        if time.monotonic() > deadline:
            raise TimeoutError("the new sandboxer did not answer within 60 s")
        await asyncio.sleep(0.002)


async def measure(sandbox_type: str, pods: int, rounds: int, config: Optional[str]) -> dict[str, Any]:
    work = tempfile.mkdtemp(prefix="kbrs", dir="/tmp")
    daemon = Daemon(sandbox_type, work, config)
    daemon.spawn()
    channel = grpc.aio.insecure_channel("unix:" + daemon.socket)
    stub = sandbox_pb2_grpc.ControllerStub(channel)
    name = sandbox_type
    ids = ["bench-%s-%d" % (uuid.uuid4().hex[:8], i) for i in range(pods)]
    waits = EngineWaits(stub, name)
    result: dict[str, Any] = {"type": sandbox_type, "pods": pods, "rounds": []}
    try:
        await platform_answers(daemon.socket, name, time.monotonic() + 60)
        for pod in ids:
            await stub.Create(sandbox_pb2.ControllerCreateRequest(sandbox_id=pod, sandboxer=name), timeout=60)
            await stub.Start(sandbox_pb2.ControllerStartRequest(sandbox_id=pod, sandboxer=name), timeout=300)
            waits.hold(pod)
        await asyncio.sleep(0.5)
        for _ in range(rounds):
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, daemon.stop)
            exited = time.monotonic()
            daemon.spawn()
            await platform_answers(daemon.socket, name, time.monotonic() + 60)
            ready = time.monotonic()
            start_cpu_ms = cpu_ms(daemon.proc.pid) if daemon.proc else 0.0
            states = [(await stub.Status(sandbox_pb2.ControllerStatusRequest(sandbox_id=pod, sandboxer=name),
                                         timeout=30, wait_for_ready=True)).state for pod in ids]
            result["rounds"].append({"stop_ms": round((exited - t0) * 1000, 1),
                                     "start_ms": round((ready - exited) * 1000, 1),
                                     "downtime_ms": round((ready - t0) * 1000, 1),
                                     "start_cpu_ms": start_cpu_ms, "loadavg_1m": os.getloadavg()[0],
                                     "pods_ready": sum(s == "SANDBOX_READY" for s in states)})
            await asyncio.sleep(1.0)  # let the held Waits come back before the next round
        result["waits_lost"] = list(waits.lost)
        result["wait_retries"] = waits.retries
    finally:
        await waits.close()
        for pod in ids:
            for call, req in (("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=pod, sandboxer=name)),
                              ("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=pod, sandboxer=name))):
                try:
                    await getattr(stub, call)(req, timeout=120)
                except grpc.aio.AioRpcError:
                    pass
        await channel.close()
        daemon.stop()
        _kill_task_server(os.path.join(work, "d"))
        shutil.rmtree(work, ignore_errors=True)
    downtime = [r["downtime_ms"] for r in result["rounds"]]
    result.update({"downtime_p50_ms": statistics.median(downtime), "downtime_max_ms": max(downtime),
                   "stop_p50_ms": statistics.median(r["stop_ms"] for r in result["rounds"]),
                   "start_p50_ms": statistics.median(r["start_ms"] for r in result["rounds"]),
                   "start_cpu_p50_ms": statistics.median(r["start_cpu_ms"] for r in result["rounds"]),
                   "downtime_p90_ms": percentile(downtime, 0.9), "target_ms": TARGET_MS})
    return result


def cpu_ms(pid: int) -> float:
    """User + system CPU time ``pid`` has used: the start's cost, whatever else the machine is doing."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return round((int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK"), 1)


def _kill_task_server(state_dir: str) -> None:
    """The task server (and its front) of this private sandboxer: processes whose command line names its dir."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/cmdline" % entry, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if any(state_dir.encode() in a for a in argv) and int(entry) != os.getpid():
            try:
                os.kill(int(entry), signal.SIGKILL)
            except ProcessLookupError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--types", default="runc,vmm")
    parser.add_argument("--pods", default="runc=10,vmm=2", help="pods per type, e.g. runc=10,vmm=2")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--vmm-config", default="", help="config for vmm-sandboxer (default: its built-in one)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "restart.json"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_restart: run as root", file=sys.stderr)
        return 2
    counts = dict((k, int(v)) for k, v in (item.split("=") for item in args.pods.split(",")))
    results = []
    for sandbox_type in args.types.split(","):
        config = args.vmm_config if sandbox_type == "vmm" and args.vmm_config else None
        one = asyncio.run(measure(sandbox_type, counts.get(sandbox_type, 1), args.rounds, config))
        results.append(one)
        print("%-5s pods=%-3d downtime p50 %.0f ms (max %.0f; stop %.0f + start %.0f, start CPU %.0f ms), target "
              "<= %.0f ms, pods ready after every round: %s, Waits lost: %d (retried %d)"
              % (sandbox_type, one["pods"], one["downtime_p50_ms"], one["downtime_max_ms"], one["stop_p50_ms"],
                 one["start_p50_ms"], one["start_cpu_p50_ms"], TARGET_MS,
                 all(r["pods_ready"] == one["pods"] for r in one["rounds"]),
                 len(one["waits_lost"]), one["wait_retries"]))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
