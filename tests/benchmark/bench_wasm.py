"""wasm benchmark: container start latency (cold and cached module), management memory per pod, and
the memory of one running module. Real wasm-sandboxer, wasm-task and wasmtime runners; as root.

    .venv/bin/python tests/benchmark/bench_wasm.py [--runs 50] [--out tests/benchmark/results/wasm.json]

- start latency = task Create -> first byte of the module's output on its FIFO (Create + Start over
  ttrpc, like containerd), p50/p90 over ``--runs``; "cold" modules differ in one custom section so
  every run compiles, "cached" runs the same module (the second start onwards loads serialized code).
- management PSS = wasm-sandboxer + wasm-task (runners excluded: they are the containers) at 1, 10
  and 50 pods, each pod with one running module that sleeps; growth per pod from 1 to 50.
- one module = PSS/RSS of the runner of a trivial sleeping module.
Targets (issue 3): cached start p50 <= 20 ms; management PSS growth <= 150 KB per pod.

    .venv/bin/python tests/benchmark/bench_wasm.py --density [--pods 1,10,50,110] [--out results/wasm-density.json]

Density (issue 17) runs the common workload (tests/benchmark/workload.py: Engine-driven pods, serial and
parallel starts, memory at each pod count) on containerd's ``containerd-shim-runc-v2`` (one shim per pod,
busybox ``sleep``) and on kuasar-wasm in one run: runtime PSS = sandboxer + wasm-task + task front +
fork-server + every runner, beside the shims' PSS; the per-container increment between the two largest
counts; start p50/p90 serial and the parallel batch; and where a runner's memory goes (smaps_rollup of one
runner and of the fork-server). A second wasm side runs a module that touches 64 MiB of linear memory.
Targets: runtime PSS <= 0.35x the shims' at 50 pods and <= 0.2x at 110; <= 1 MB per additional trivial
container; serial start p50 <= 0.6x.
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
from typing import Any

from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.ctl.clients import SandboxClient
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.sandbox.task_supervisor import TASK_SERVICE
from kuasar_shared.ttrpc import Client

BIN = os.path.dirname(sys.executable)
HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $p (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "ready\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 6))
    (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))
    ;; a 1000 s monotonic-clock subscription at 64 (tag 0 = clock, id 1, timeout, precision 0, flags 0),
    ;; polled forever: a module that stays alive without burning CPU
    (i32.store8 (i32.const 72) (i32.const 0)) (i32.store (i32.const 80) (i32.const 1))
    (i64.store (i32.const 88) (i64.const 1000000000000))
    (loop $l (drop (call $p (i32.const 64) (i32.const 200) (i32.const 1) (i32.const 300))) (br $l))))
"""


def _pss_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in KiB from smaps_rollup."""
    pss = rss = 0
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
            elif line.startswith("Rss:"):
                rss = int(line.split()[1])
    return pss, rss


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "min": round(min(values), 2), "p50": round(_pct(values, 0.5), 2),
            "p90": round(_pct(values, 0.9), 2), "mean": round(statistics.mean(values), 2),
            "max": round(max(values), 2)}


def _bundle(base: str, name: str, module: str, sandbox_id: str = "") -> str:
    bundle = os.path.join(base, name)
    rootfs = os.path.join(bundle, "rootfs")
    os.makedirs(rootfs)
    shutil.copy(module, os.path.join(rootfs, "m.wat"))
    spec = {"root": {"path": "rootfs"}, "process": {"args": ["/m.wat"], "cwd": "/"},
            "annotations": {"io.kubernetes.cri.sandbox-id": sandbox_id} if sandbox_id else {}}
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    return bundle


async def _first_output(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    done = loop.create_future()

    def readable() -> None:
        try:
            if os.read(fd, 4096) and not done.done():
                done.set_result(None)
        except BlockingIOError:
            pass
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, 30)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _start_latency(client: Client, work: str, runs: int, cold: bool) -> list[float]:
    module = os.path.join(work, "hello.wat")
    samples = []
    for i in range(runs):
        if cold or i == 0:
            with open(module, "w") as handle:  # a different comment: a different file hash, a cache miss
                handle.write(HELLO_WAT + f";; {uuid.uuid4().hex}\n")
        cid = f"bench-{'cold' if cold else 'warm'}-{i}"
        bundle = _bundle(work, cid, module)
        fifo = os.path.join(work, cid + ".out")
        os.mkfifo(fifo)
        reader = asyncio.ensure_future(_first_output(fifo))
        await asyncio.sleep(0.02)
        started = time.perf_counter()
        await client.call(TASK_SERVICE, "Create", shim_pb2.CreateTaskRequest(id=cid, bundle=bundle, stdout=fifo),
                          shim_pb2.CreateTaskResponse, timeout=30)
        await client.call(TASK_SERVICE, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse, timeout=30)
        await reader
        samples.append((time.perf_counter() - started) * 1000)
        await client.call(TASK_SERVICE, "Kill", shim_pb2.KillRequest(id=cid, signal=9), empty_pb2.Empty, timeout=10)
        await client.call(TASK_SERVICE, "Wait", shim_pb2.WaitRequest(id=cid), shim_pb2.WaitResponse, timeout=10)
        await client.call(TASK_SERVICE, "Delete", shim_pb2.DeleteRequest(id=cid), shim_pb2.DeleteResponse,
                          timeout=10)
        await asyncio.sleep(0.15)  # let the pool warm its next runner, as between real container starts
    return samples


async def _memory(sandboxer: SandboxClient, client: Client, work: str, sandboxer_pid: int, task_pid: int,
                  counts: list[int]) -> dict[str, Any]:
    module = os.path.join(work, "hello.wat")
    pods: list[str] = []
    by_count: dict[str, Any] = {}
    runner_pid = 0
    for target in counts:
        while len(pods) < target:
            pod = f"pod-{len(pods)}-{uuid.uuid4().hex[:6]}"
            await sandboxer.call("Create", sandbox_pb2.ControllerCreateRequest(sandbox_id=pod), 30)
            await sandboxer.call("Start", sandbox_pb2.ControllerStartRequest(sandbox_id=pod), 30)
            cid = pod + "-c"
            created = await client.call(TASK_SERVICE, "Create", shim_pb2.CreateTaskRequest(
                id=cid, bundle=_bundle(work, cid, module, pod)), shim_pb2.CreateTaskResponse, timeout=30)
            await client.call(TASK_SERVICE, "Start", shim_pb2.StartRequest(id=cid), shim_pb2.StartResponse, timeout=30)
            runner_pid = created.pid
            pods.append(pod)
        await asyncio.sleep(1.0)
        s_pss, s_rss = _pss_kb(sandboxer_pid)
        t_pss, t_rss = _pss_kb(task_pid)
        by_count[str(target)] = {"sandboxer_pss_kb": s_pss, "task_server_pss_kb": t_pss,
                                 "management_pss_kb": s_pss + t_pss, "management_rss_kb": s_rss + t_rss}
    module_pss, module_rss = _pss_kb(runner_pid)
    for pod in pods:
        await sandboxer.call("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=pod), 30)
        await sandboxer.call("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=pod), 30)
    first, last = by_count[str(counts[0])], by_count[str(counts[-1])]
    growth = (last["management_pss_kb"] - first["management_pss_kb"]) / (counts[-1] - counts[0])
    return {"pods": by_count, "growth_pss_kb_per_pod": round(growth, 1),
            "one_module_runner": {"pss_kb": module_pss, "rss_kb": module_rss}}


async def bench(runs: int, counts: list[int]) -> dict[str, Any]:
    # state on tmpfs like the default --dir /run/kuasar-wasm (records are fsynced after every change)
    work = tempfile.mkdtemp(prefix="kuasar-bench-wasm-", dir="/run" if os.access("/run", os.W_OK) else None)
    state = os.path.join(work, "dir")
    listen = os.path.join(work, "wasm.sock")
    log = open(os.path.join(work, "sandboxer.log"), "wb")
    proc = subprocess.Popen([os.path.join(BIN, "wasm-sandboxer"), "--listen", listen, "--dir", state],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    task_pid = 0
    load_before = os.getloadavg()
    try:
        while not os.path.exists(listen):
            if proc.poll() is not None:
                raise RuntimeError(open(os.path.join(work, "sandboxer.log")).read())
            await asyncio.sleep(0.05)
        with open(os.path.join(state, "task-server.json")) as handle:
            record = json.load(handle)
        task_pid = int(record["pid"])
        client = await Client.connect_unix(record["socket"])
        sandboxer = SandboxClient(listen, "wasm")
        try:
            cold = await _start_latency(client, work, runs, cold=True)
            cached = await _start_latency(client, work, runs, cold=False)
            memory = await _memory(sandboxer, client, work, proc.pid, task_pid, counts)
        finally:
            await client.close()
            await sandboxer.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        if task_pid:
            try:
                os.kill(task_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        log.close()
        shutil.rmtree(work, ignore_errors=True)
    cached_ms = cached[1:]  # the first "cached" run compiles the module
    return {"benchmark": "wasm", "unit": "ms", "runs": runs, "cpus": os.cpu_count(),
            # latencies are only comparable on a quiet machine: the 1-minute load average around the run
            "loadavg_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
            "start_latency_cold_ms": _summary(cold), "start_latency_cached_ms": _summary(cached_ms),
            "memory": memory,
            "targets": {"cached_start_p50_ms": 20, "growth_pss_kb_per_pod": 150},
            "met": {"cached_start_p50": _pct(cached_ms, 0.5) <= 20,
                    "growth_pss_per_pod": memory["growth_pss_kb_per_pod"] <= 150}}


_SMAPS_FIELDS = ("Rss", "Pss", "Shared_Clean", "Shared_Dirty", "Private_Clean", "Private_Dirty", "Anonymous")


def _smaps_kb(pid: int) -> dict[str, int]:
    """The smaps_rollup fields that say where a process's memory goes, in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in _SMAPS_FIELDS:
                out[name.lower() + "_kb"] = int(rest.split()[0])
    return out


def _runtime_pss(row: dict[str, Any]) -> int:
    """Everything of the runtime at one pod count: management plane plus per-pod processes (shim or runners)."""
    return int(row["management"]["total"]["pss_kb"] + row["per_pod"]["total"]["pss_kb"])


def _density_sides() -> tuple[Any, Any, Any, Any]:
    """The side classes, imported here: the density run needs the workload suite, the default run does not."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import baseline
    import kuasar
    import workload

    class WasmSide(kuasar.KuasarSide):
        """kuasar-wasm, with one runner's and the fork-server's memory broken down after the common phases."""

        async def after_measure(self, result: dict[str, Any]) -> None:
            pod = await self.start_pod()
            try:
                await asyncio.sleep(1.0)
                pids = self.groups().per_pod["pod processes"]
                runners = [p for p in pids if self.cgroup_parent in _read(f"/proc/{p}/cgroup")]
                forkservers = [p for p in pids if _read(f"/proc/{p}/comm").strip() == "wasm-forkserver"]
                result["smaps"] = {"runner": _smaps_kb(runners[0]) if runners else {},
                                   "fork_server": _smaps_kb(forkservers[0]) if forkservers else {}}
            finally:
                await self.remove_pods([pod])

    return baseline, kuasar, workload, WasmSide


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return ""


async def density(pods: list[int], serial: int, parallel: int) -> dict[str, Any]:
    import daemons
    import run  # tests/benchmark/run.py: run_side, clean-up helpers
    baseline, kuasar, workload, wasm_side = _density_sides()
    work = tempfile.mkdtemp(prefix="kbench-")
    images = os.path.join(work, "images")
    plan = workload.Plan(serial=serial, parallel=(parallel,) if parallel else (), pods=tuple(pods))
    touch_plan = workload.Plan(serial=0, parallel=(), pods=tuple(n for n in pods if n <= 50), warmup=1)
    sides: dict[str, Any] = {}
    load_before = os.getloadavg()[0]
    created_run_dir = not os.path.exists("/run/containerd")
    try:
        subprocess.run(["sh", os.path.join(run.REPO, "hack", "make-busybox-rootfs.sh"),
                        os.path.join(images, "busybox")], check=True, stdout=subprocess.DEVNULL)
        containerd = baseline.Containerd(os.path.join(work, "containerd"))
        await containerd.start()
        try:
            shim = baseline.ShimSide(containerd, os.path.join(work, "shim"), images)
            sides["shim"] = await run.run_side(shim, plan)
        finally:
            await containerd.stop()
        profile = kuasar.PROFILES["wasm"]
        sides["wasm"] = await run.run_side(wasm_side(profile, os.path.join(work, "wasm"), images), plan)
        touch = kuasar.Profile("wasm", "wasm-sandboxer", "wasm-task", image="wasm-touch64",
                               command=("/touch64.wat",), files=(("touch64.wat", kuasar.TOUCH64_WAT),))
        sides["wasm_touch64"] = await run.run_side(wasm_side(touch, os.path.join(work, "wasm64"), images),
                                                   touch_plan)
    finally:
        daemons.unmount_below(work)
        run.remove_cgroups()
        run.cleanup_shim_state(created_run_dir)
        shutil.rmtree(work, ignore_errors=True)
    result = _density_summary(sides)
    # latencies are only comparable on a quiet machine: the 1-minute load average around the run
    result["loadavg_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    return result


def _density_summary(sides: dict[str, Any]) -> dict[str, Any]:
    failed = {name: side["error"] for name, side in sides.items() if "error" in side}
    if failed:
        return {"benchmark": "wasm density", "error": failed, "sides": sides}
    shim = {row["pods"]: _runtime_pss(row) for row in sides["shim"]["memory"]}
    wasm = {row["pods"]: _runtime_pss(row) for row in sides["wasm"]["memory"]}
    touch = {row["pods"]: _runtime_pss(row) for row in sides["wasm_touch64"]["memory"]}
    counts = sorted(wasm)

    def increment(pss: dict[int, int]) -> float:
        ns = sorted(pss)
        return round((pss[ns[-1]] - pss[ns[-2]]) / (ns[-1] - ns[-2]), 1) if len(ns) > 1 else 0.0

    ratios = {str(n): round(wasm[n] / shim[n], 3) for n in counts if shim.get(n)}
    start = {name: sides[name]["serial"]["latency_ms"] for name in ("shim", "wasm")}
    parallel = {name: [{"n": b["n"], "completion_ms": round(b["completion_ms"], 1),
                        "p50_ms": round(b["latency_ms"]["p50"], 1), "p90_ms": round(b["latency_ms"]["p90"], 1)}
                       for b in sides[name]["parallel"]] for name in ("shim", "wasm")}
    start_ratio = round(start["wasm"]["p50"] / start["shim"]["p50"], 3)
    result = {
        "benchmark": "wasm density (issue 17)", "cpus": os.cpu_count(),
        "runtime_pss_kb": {"wasm": {str(n): wasm[n] for n in counts}, "shim": {str(n): shim[n] for n in sorted(shim)},
                           "wasm_touch64": {str(n): touch[n] for n in sorted(touch)}},
        "ratio_wasm_to_shim": ratios,
        "per_container_pss_kb": {"wasm": increment(wasm), "shim": increment(shim),
                                 "wasm_touch64": increment(touch)},
        "start_serial_ms": {name: {k: round(v, 1) for k, v in s.items() if k in ("n", "p50", "p90")}
                            for name, s in start.items()},
        "start_p50_ratio": start_ratio, "parallel": parallel,
        "smaps": {"wasm": sides["wasm"].get("smaps"), "wasm_touch64": sides["wasm_touch64"].get("smaps")},
        "targets": {"ratio_50": 0.35, "ratio_110": 0.2, "per_container_pss_kb": 1024, "start_p50_ratio": 0.6},
        "sides": sides,
    }
    result["met"] = {"ratio_50": ratios.get("50", 1.0) <= 0.35, "ratio_110": ratios.get("110", 1.0) <= 0.2,
                     "per_container": increment(wasm) <= 1024, "start_p50": start_ratio <= 0.6}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--pods", default="")
    parser.add_argument("--density", action="store_true", help="issue 17: wasm beside containerd-shim-runc-v2")
    parser.add_argument("--serial", type=int, default=20, help="--density: serial starts per side")
    parser.add_argument("--parallel", type=int, default=50, help="--density: one batch of this many starts")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    results = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    if args.density:
        os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
        from kuasar_shared.daemon.reaper import set_child_subreaper
        set_child_subreaper(True)
        result = asyncio.run(density([int(n) for n in (args.pods or "1,10,50,110").split(",")], args.serial,
                                     args.parallel))
        out = args.out or os.path.join(results, "wasm-density.json")
        summary = {k: v for k, v in result.items() if k != "sides"}
    else:
        result = asyncio.run(bench(args.runs, [int(n) for n in (args.pods or "1,10,50").split(",")]))
        out = args.out or os.path.join(results, "wasm.json")
        summary = result
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as handle:
        json.dump(result, handle, indent=1)
    print(json.dumps(summary, indent=2))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
