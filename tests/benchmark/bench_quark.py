#!/usr/bin/env python3
"""quark benchmark: pod + container start latency and management memory, vs plain runsc. As root.

    .venv/bin/python tests/benchmark/bench_quark.py [--serial 20] [--parallel 10] [--pods 1,10,30]
                                                    [--out tests/benchmark/results/quark.json]

- ours: a private quark-sandboxer (+ quark-task) driven by kuasar-ctl's Engine, the CRI call sequence
  of containerd (run pod = Sandbox API Create/Start, then task Create/Start of one ``sleep``
  container); latency p50/p90 over ``--serial`` one-at-a-time starts and ``--parallel`` at once.
- baseline: ``runsc create`` + ``runsc start`` of a busybox ``sleep`` bundle with the same flags
  (``--platform=ptrace --network=none``): one sandbox per start, the least any runsc pod costs.
- overhead = our p50 - baseline p50 (target <= 20 ms). Our start is a pod (root container with
  the pause program) plus a container joining it: two runsc create/start pairs, the baseline one.
  ``overhead_vs_two_runsc_starts`` subtracts a second baseline container start too.
- memory at ``--pods`` running pods: PSS of the management plane (quark-sandboxer + quark-task, and
  apart from them the ``runsc wait`` helpers quark-task keeps per running container) reported
  separately from runsc's own per-pod processes (Sentry, gofers).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import procstats  # noqa: E402
from kuasar import PROFILES, KuasarSide  # noqa: E402
from workload import Groups, Plan, Side, measure  # noqa: E402

RUNSC = shutil.which("runsc") or "runsc"
FLAGS = ["--platform=ptrace", "--network=none"]


class QuarkSide(KuasarSide):
    """The harness's quark side, with quark-task's ``runsc wait`` helpers in their own group."""

    def groups(self) -> Groups:
        groups = super().groups()
        tasks = set(groups.management.get(self.profile.task_server, []))
        tree = procstats.children_map()
        waiters = [pid for t in tasks for pid in tree.get(t, []) if "wait" in procstats.cmdline(pid)[-2:]]
        groups.management["runsc wait helpers"] = waiters
        groups.per_pod = {"runsc sandboxes (sentry, gofers)":
                          [p for p in groups.per_pod.get("pod processes", []) if p not in waiters]}
        return groups


class RunscSide(Side):
    """Plain runsc: one ``create`` + ``start`` of the same bundle per pod."""

    name = "runsc"

    def __init__(self, work: str, rootfs: str) -> None:
        self.work, self.rootfs = work, rootfs
        self.root = os.path.join(work, "runsc-root")
        self._n = 0

    async def setup(self) -> None:
        os.makedirs(self.work, exist_ok=True)

    async def teardown(self) -> None:
        if os.path.isdir(self.root):
            await self.remove_pods(os.listdir(self.root))

    def _runsc(self, *args: str) -> None:
        subprocess.run([RUNSC, "--root", self.root, *FLAGS, *args], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def start_pod(self) -> str:
        self._n += 1
        cid = f"base-{self._n}"
        bundle = os.path.join(self.work, cid)
        os.makedirs(bundle)
        subprocess.run([RUNSC, "spec", "--bundle", bundle], check=True)
        with open(os.path.join(bundle, "config.json")) as f:
            spec = json.load(f)
        spec["process"].update(terminal=False, args=["/bin/sleep", "100000"])
        spec["root"] = {"path": self.rootfs, "readonly": True}
        with open(os.path.join(bundle, "config.json"), "w") as f:
            json.dump(spec, f)
        t0 = time.perf_counter()
        await asyncio.to_thread(self._runsc, "create", "--bundle", bundle, cid)
        await asyncio.to_thread(self._runsc, "start", cid)
        self.last_steps = {"runsc create + start": (time.perf_counter() - t0) * 1000}
        return cid

    async def remove_pods(self, pods: Sequence[str]) -> None:
        for cid in pods:
            if os.path.exists(os.path.join(self.root, cid)) or cid.startswith("base-"):
                await asyncio.to_thread(self._runsc, "delete", "-force", cid)
            shutil.rmtree(os.path.join(self.work, cid), ignore_errors=True)

    def groups(self) -> Groups:
        per_pod = [int(p) for p in os.listdir("/proc") if p.isdigit()
                   and any(self.root in a for a in procstats.cmdline(int(p)))]
        return Groups(per_pod={"runsc sandboxes (sentry, gofers)": per_pod})

    def versions(self) -> Dict[str, str]:
        out = subprocess.run([RUNSC, "--version"], capture_output=True, text=True).stdout
        return {"runsc": out.splitlines()[0] if out else "?"}


def _p(result: Dict[str, Any], key: str) -> float:
    return float(result["serial"]["latency_ms"][key])


async def main_async(args: argparse.Namespace) -> Dict[str, Any]:
    work = tempfile.mkdtemp(prefix="kuasar-bench-quark-")
    images = os.path.join(work, "images")
    subprocess.run(["sh", os.path.join(REPO, "hack", "make-busybox-rootfs.sh"), os.path.join(images, "busybox")],
                   check=True, stdout=subprocess.DEVNULL)
    plan = Plan(serial=args.serial, parallel=(args.parallel,), pods=tuple(args.pods), warmup=2)
    results: Dict[str, Any] = {"plan": {"serial": plan.serial, "parallel": list(plan.parallel),
                                        "pods": list(plan.pods)}}
    try:
        base = RunscSide(os.path.join(work, "base"), os.path.join(images, "busybox"))
        await base.setup()
        try:
            results["runsc"] = await measure(base, Plan(serial=args.serial, parallel=(args.parallel,), pods=(),
                                                        warmup=2))
        finally:
            await base.teardown()
        ours = QuarkSide(PROFILES["quark"], os.path.join(work, "quark"), images)
        await ours.setup()
        try:
            results["kuasar-quark"] = await measure(ours, plan)
        finally:
            await ours.teardown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ours_r, base_r = results["kuasar-quark"], results["runsc"]
    results["summary"] = {
        "serial_p50_ms": {"kuasar-quark": _p(ours_r, "p50"), "runsc": _p(base_r, "p50")},
        "serial_p90_ms": {"kuasar-quark": _p(ours_r, "p90"), "runsc": _p(base_r, "p90")},
        "parallel_p50_ms": {"kuasar-quark": ours_r["parallel"][0]["latency_ms"]["p50"],
                            "runsc": base_r["parallel"][0]["latency_ms"]["p50"]},
        "parallel_p90_ms": {"kuasar-quark": ours_r["parallel"][0]["latency_ms"]["p90"],
                            "runsc": base_r["parallel"][0]["latency_ms"]["p90"]},
        "overhead_p50_ms": _p(ours_r, "p50") - _p(base_r, "p50"),
        "overhead_vs_two_runsc_starts_p50_ms": _p(ours_r, "p50") - 2 * _p(base_r, "p50"),
        "management_pss_kb": {str(row["pods"]): {k: v["pss_kb"] for k, v in row["management"].items()}
                              for row in ours_r.get("memory", [])},
        "runsc_per_pod_pss_kb": {str(row["pods"]): row["per_pod"]["total"]["pss_kb"]
                                 for row in ours_r.get("memory", [])},
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serial", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=10)
    parser.add_argument("--pods", type=lambda s: [int(x) for x in s.split(",")], default=[1, 10, 30])
    parser.add_argument("--out", default=os.path.join(HERE, "results", "quark.json"))
    args = parser.parse_args()
    if os.geteuid() != 0 or not shutil.which("runsc"):
        print("bench_quark: needs root and runsc", file=sys.stderr)
        return 1
    results = asyncio.run(main_async(args))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
