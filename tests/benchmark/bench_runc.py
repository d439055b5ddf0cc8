#!/usr/bin/env python3
"""runc pods through runc-sandboxer + runc-task: start latency and management-plane memory.

Usage (root): .venv/bin/python tests/benchmark/bench_runc.py [--serial 50] [--parallel 20] [--pods 1,10,50]
              [--out tests/benchmark/results/runc.json]

Starts a private runc-sandboxer (own --listen/--dir), drives it with kuasar-ctl's engine (the
same Sandbox API + Task API call sequence containerd's CRI plugin makes), and measures:
  - pod+container start latency (runp + create + start, until the task is running), serial and parallel;
  - PSS/RSS of the management plane (runc-sandboxer + runc-task, /proc/<pid>/smaps_rollup) with N pods
    each running one `sleep` container.
Prints a summary and writes JSON. Everything it starts is removed afterwards.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
sys.path.insert(0, os.path.join(REPO, "shared", "src"))

from kuasar_shared.ctl.config import load_container_config, load_pod_config  # noqa: E402
from kuasar_shared.ctl.engine import Engine, EngineOptions  # noqa: E402


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "min": min(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "max": max(ms), "mean": statistics.fmean(ms)}


def smaps(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1].lower() + "_kb"] = int(parts[1])
    return out


def find_pids(state_dir: str) -> dict:
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if not any(state_dir in a for a in argv):
            continue
        joined = " ".join(argv[:2])
        if "runc-task" in joined:
            found["runc-task"] = int(entry)
        elif "runc-sandboxer" in joined:
            found.setdefault("runc-sandboxer", int(entry))
    return found


class Bench:
    def __init__(self, work: str) -> None:
        self.work = work
        self.listen = os.path.join(work, "runc.sock")
        self.dir = os.path.join(work, "dir")
        self.proc: subprocess.Popen | None = None
        self.images = os.path.join(work, "images")
        pod = os.path.join(work, "pod.yaml")
        ctr = os.path.join(work, "ctr.yaml")
        with open(pod, "w") as f:
            f.write("metadata: {name: bench, namespace: bench, uid: UID}\nlog_directory: %s/logs\n"
                    "linux:\n  cgroup_parent: /kuasar-bench\n  security_context:\n"
                    "    namespace_options: {network: NODE, pid: CONTAINER}\n" % work)
        with open(ctr, "w") as f:
            f.write("metadata: {name: sleeper}\nimage: {image: busybox}\ncommand: [/bin/sleep, '100000']\n"
                    "log_path: sleeper.log\n")
        self.pod_template = open(pod).read()
        self.ctr = load_container_config(ctr)
        self.counter = 0

    def start(self) -> None:
        subprocess.run(["sh", os.path.join(REPO, "hack", "make-busybox-rootfs.sh"),
                        os.path.join(self.images, "busybox")], check=True, stdout=subprocess.DEVNULL)
        self.log = open(os.path.join(self.work, "sandboxer.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(BIN, "runc-sandboxer"), "--listen", self.listen, "--dir", self.dir,
                                      "--log-level", "warn"], stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("runc-sandboxer did not start; see " + self.log.name)
            time.sleep(0.05)

    def engine(self) -> Engine:
        return Engine(EngineOptions("runc", self.listen, os.path.join(self.work, "ctl"), self.images))

    def pod_config(self):
        self.counter += 1
        path = os.path.join(self.work, f"pod-{self.counter}.yaml")
        with open(path, "w") as f:
            f.write(self.pod_template.replace("UID", f"uid-{self.counter}").replace("name: bench,",
                                                                                  f"name: bench-{self.counter},"))
        return load_pod_config(path)

    async def run_one(self, engine: Engine) -> tuple[str, float]:
        config = self.pod_config()
        t0 = time.perf_counter()
        pod = await engine.run_pod(config)
        ctr = await engine.create_container(pod, self.ctr, config)
        await engine.start_container(ctr)
        return pod, (time.perf_counter() - t0) * 1000

    async def remove_all(self, engine: Engine, pods: list[str]) -> None:
        for pod in pods:
            await engine.stop_pod(pod)
            await engine.remove_pod(pod)

    def stop(self) -> None:
        pids = find_pids(self.dir)
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        if "runc-task" in pids:
            os.kill(pids["runc-task"], signal.SIGTERM)


async def measure(args: argparse.Namespace, bench: Bench) -> dict:
    result: dict = {}
    async with bench.engine() as engine:
        pod, _ = await bench.run_one(engine)  # warm-up: page cache, imports
        await bench.remove_all(engine, [pod])
        serial, pods = [], []
        for _ in range(args.serial):
            pod, ms = await bench.run_one(engine)
            serial.append(ms)
            pods.append(pod)
            if len(pods) >= 10:
                await bench.remove_all(engine, pods)
                pods = []
        await bench.remove_all(engine, pods)
        result["start_serial_ms"] = summary(serial)

        t0 = time.perf_counter()
        runs = await asyncio.gather(*(bench.run_one(engine) for _ in range(args.parallel)))
        result["start_parallel_ms"] = summary([ms for _, ms in runs])
        result["start_parallel_ms"]["wall"] = (time.perf_counter() - t0) * 1000
        await bench.remove_all(engine, [p for p, _ in runs])

        memory = []
        pods = []
        for target in sorted(args.pods):
            while len(pods) < target:
                pods.append((await bench.run_one(engine))[0])
            await asyncio.sleep(1.0)
            pids = find_pids(bench.dir)
            row = {"pods": target}
            for name, pid in pids.items():
                row[name] = smaps(pid)
            row["total_pss_kb"] = sum(v["pss_kb"] for k, v in row.items() if isinstance(v, dict))
            row["total_rss_kb"] = sum(v["rss_kb"] for k, v in row.items() if isinstance(v, dict))
            memory.append(row)
        await bench.remove_all(engine, pods)
        result["memory"] = memory
        if len(memory) >= 2:
            first, last = memory[0], memory[-1]
            result["pss_growth_per_pod_kb"] = (last["total_pss_kb"] - first["total_pss_kb"]) / (
                last["pods"] - first["pods"])
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serial", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=20)
    ap.add_argument("--pods", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 50])
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "benchmark", "results", "runc.json"))
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("runc"):
        raise SystemExit("bench_runc: needs root and runc")
    work = tempfile.mkdtemp(prefix="kuasar-bench-")
    bench = Bench(work)
    try:
        bench.start()
        result = asyncio.run(measure(args, bench))
    finally:
        bench.stop()
        subprocess.run(["umount", "-R", work], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)
    report = {"benchmark": "runc pod+container start and management memory", "date":
              datetime.now(timezone.utc).isoformat(), "machine": {"kernel": platform.release(),
              "cpus": os.cpu_count(), "python": platform.python_version()},
              "runc": subprocess.run(["runc", "--version"], capture_output=True, text=True).stdout.splitlines()[0],
              "params": vars(args) | {"out": None}, **result}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    s, p = report["start_serial_ms"], report["start_parallel_ms"]
    print(f"serial   n={s['n']:3d} p50={s['p50']:.1f} ms p90={s['p90']:.1f} ms")
    print(f"parallel n={p['n']:3d} p50={p['p50']:.1f} ms p90={p['p90']:.1f} ms wall={p['wall']:.0f} ms")
    for row in report["memory"]:
        print(f"pods={row['pods']:3d} management PSS={row['total_pss_kb'] / 1024:.1f} MB "
              f"RSS={row['total_rss_kb'] / 1024:.1f} MB")
    if "pss_growth_per_pod_kb" in report:
        print(f"PSS growth per pod: {report['pss_growth_per_pod_kb']:.0f} KB")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
