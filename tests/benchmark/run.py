#!/usr/bin/env python3
"""One command for the side-by-side benchmark: Kuasar (Python) pods vs containerd's shim v2, same machine.

    sudo .venv/bin/python tests/benchmark/run.py [--smoke] [--types runc,wasm] [--out DIR] [--no-plots]

(``tox -e bench`` runs the full suite, ``tox -e bench-smoke`` a tiny one.) Needs root. It starts a
private containerd, one shim per baseline pod, and a private sandboxer per available sandbox type,
all under one temp dir, and removes every process, mount, cgroup and socket it created. Writes
``results.json``, ``RESULTS.md`` and PNG plots to ``--out`` (default tests/benchmark/results).
With ``--types`` only those types run (the baseline only with runc, which its ratios compare with) and
their sides replace theirs in an existing ``results.json`` of the same kind (full or smoke); the
other sides stay as they were measured.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
# the driver forks log writers and shims after grpc ran; grpc's fork handlers must stay out of that
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

import baseline  # noqa: E402
import bench_vmm  # noqa: E402
import daemons  # noqa: E402
import kuasar  # noqa: E402
import hotspots  # noqa: E402
import procstats  # noqa: E402
import report  # noqa: E402
from workload import SMOKE, Plan, Side, measure  # noqa: E402

from kuasar_shared.daemon.reaper import set_child_subreaper  # noqa: E402

log = logging.getLogger("bench")
_CGROUP_GLOB = "/sys/fs/cgroup/*/kuasar-bench-*"
_RUN_DIR = "/run/containerd"
_SHIM_RUNC_ROOT = "/run/containerd/runc"


def _ints(text: str) -> tuple:
    return tuple(int(x) for x in text.split(",") if x)


def machine() -> Dict[str, Any]:
    info: Dict[str, Any] = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
                            "loadavg_1_5_15": list(os.getloadavg())}
    try:
        with open("/etc/os-release") as f:
            info["os"] = dict(line.strip().split("=", 1) for line in f if "=" in line).get("PRETTY_NAME", "").strip('"')
        with open("/proc/meminfo") as f:
            info["memory_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return info


def remove_cgroups(names: Sequence[str] = ()) -> None:
    """rmdir the kuasar-bench-* cgroups a run created (deepest first) in every hierarchy: those of
    ``names`` (cgroup parents such as ``/kuasar-bench-cri``), else every kuasar-bench-* one."""
    patterns = [f"/sys/fs/cgroup/*{n}" for n in names] + [f"/sys/fs/cgroup/unified{n}" for n in names] if names \
        else [_CGROUP_GLOB, "/sys/fs/cgroup/unified/kuasar-bench-*"]
    for top in sorted({path for pattern in patterns for path in glob.glob(pattern)}):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
            try:
                os.rmdir(dirpath)
            except OSError as err:
                log.warning("cannot remove cgroup %s: %s", dirpath, err)


def ratios(sides: Dict[str, Any]) -> Dict[str, Any]:
    """ours/baseline ratios for the issue's targets (None when a side is missing)."""
    base, ours = sides.get(baseline.ShimSide.name), sides.get("kuasar-runc")
    out: Dict[str, Any] = {}
    if not base or not ours or "error" in base or "error" in ours:
        return out

    def pss(side: Dict[str, Any], pods: int, with_infra: bool = False) -> Optional[float]:
        row = next((r for r in side.get("memory", []) if r["pods"] == pods), None)
        if row is None:
            return None
        return row["management"]["total"]["pss_kb"] + (row["per_pod"]["total"]["pss_kb"] if with_infra else 0)

    for pods in sorted({r["pods"] for r in ours.get("memory", [])} & {r["pods"] for r in base.get("memory", [])}):
        b, o = pss(base, pods), pss(ours, pods)
        if b and o is not None:
            out[f"pss_{pods}"] = o / b
        b, o = pss(base, pods, True), pss(ours, pods, True)
        if b and o is not None and pods in (50, 110):
            out[f"pss_with_pod_infra_{pods}"] = o / b
    if "serial" in base and "serial" in ours:
        out["serial_p50"] = ours["serial"]["latency_ms"]["p50"] / base["serial"]["latency_ms"]["p50"]
    for o, b in zip(ours.get("parallel", []), base.get("parallel", [])):
        if o["n"] == b["n"]:
            out[f"parallel_{o['n']}_completion"] = o["completion_ms"] / b["completion_ms"]
    return out


def merge(previous: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, Any]:
    """``current`` (a run of some types) laid over ``previous`` (the results.json it goes to): its sides
    and plans replace theirs, the others are kept; the header stays the previous run's, and ``updates``
    names each side measured later with its date and load average."""
    merged = dict(previous)
    merged["sides"] = {**previous["sides"], **current["sides"]}
    merged["plans"] = {**previous.get("plans", {}), **current["plans"]}
    run = {"date": current["date"], "loadavg_before": current["machine"]["loadavg_before"],
           "loadavg_after": current["machine"]["loadavg_1_5_15"]}
    merged["updates"] = {**previous.get("updates", {}), **{name: run for name in current["sides"]}}
    merged["ratios"] = ratios(merged["sides"])
    return merged


async def run_side(side: Side, plan: Plan, profile_pods: int = 0, out_dir: str = "") -> Dict[str, Any]:
    log.info("== %s", side.name)
    started = time.monotonic()
    try:
        await side.setup()
        result = await measure(side, plan)
        if profile_pods and isinstance(side, kuasar.KuasarSide):
            log.info("%s: profiling %d serial starts with py-spy", side.name, profile_pods)
            result["profile"] = await hotspots.profile_starts(side, profile_pods, out_dir)
    except Exception as err:  # one broken side must not lose the others' numbers
        log.exception("%s failed; its log ends with:\n%s", side.name, side.diagnostics())
        result = {"side": side.name, "error": f"{type(err).__name__}: {err}"}
    finally:
        await side.teardown()
        procstats.reap_zombie_children()
    result["duration_s"] = round(time.monotonic() - started, 1)
    return result


async def run_all(args: argparse.Namespace, work: str) -> Dict[str, Any]:
    images = os.path.join(work, "images")
    subprocess.run(["sh", os.path.join(REPO, "hack", "make-busybox-rootfs.sh"), os.path.join(images, "busybox")],
                   check=True, stdout=subprocess.DEVNULL)
    default = SMOKE if args.smoke else Plan(serial=args.serial, parallel=args.parallel, pods=args.pods)
    sides: Dict[str, Any] = {}
    plans: Dict[str, Any] = {}
    if args.types and "runc" not in args.types:
        log.info("no baseline: it is compared with kuasar-runc, which is not among --types")
    elif baseline.available():
        containerd = baseline.Containerd(os.path.join(work, "containerd"))
        await containerd.start()
        try:
            shim = baseline.ShimSide(containerd, os.path.join(work, "shim"), images)
            sides[shim.name] = await run_side(shim, default)
            plans[shim.name] = default
            ctr_plan = Plan(serial=default.serial, parallel=default.parallel, pods=(), warmup=default.warmup)
            ctr = baseline.CtrSide(containerd, os.path.join(work, "ctr"), images)
            sides[ctr.name] = await run_side(ctr, ctr_plan)
            plans[ctr.name] = ctr_plan
        finally:
            await containerd.stop()
    else:
        log.warning("containerd, ctr, %s or runc missing: no baseline", baseline.SHIM_BINARY)
    for profile in kuasar.available_profiles():
        if (args.types and profile.sandbox_type not in args.types) or (args.smoke and profile.smoke is None):
            continue
        side_type = bench_vmm.VmmSide if profile.sandbox_type == "vmm" else kuasar.KuasarSide
        side = side_type(profile, os.path.join(work, profile.sandbox_type), images)
        plan = profile.smoke if args.smoke else (default if profile.sandbox_type == "runc" else profile.plan)
        profile_pods = 0 if args.smoke else min(args.profile, plan.serial)
        sides[side.name] = await run_side(side, plan, profile_pods, args.out)
        plans[side.name] = plan
        if profile.sandbox_type == "runc" and "error" not in sides[side.name]:
            sides[side.name]["start_steps"] = await start_steps(os.path.join(work, "steps"), images,
                                                                SMOKE.serial if args.smoke else args.steps)
    return {"sides": sides, "plans": {k: {"serial": p.serial, "parallel": list(p.parallel), "pods": list(p.pods),
                                          "warmup": p.warmup} for k, p in plans.items()}}


async def start_steps(work: str, images: str, rounds: int) -> Dict[str, Any]:
    """The per-step breakdown of serial runc starts (:mod:`startsteps`, a process of its own: it reaps
    every child, which this driver must not)."""
    log.info("kuasar-runc: %d serial starts, step by step, and bare runc", rounds)
    done = await asyncio.to_thread(subprocess.run, [sys.executable, os.path.join(HERE, "startsteps.py"), "--work",
                                                    work, "--images", images, "--rounds", str(rounds)],
                                   capture_output=True, text=True, check=False)
    if done.returncode:
        return {"error": done.stderr.strip()[-2000:]}
    return json.loads(done.stdout)


def cleanup_shim_state(created_run_dir: bool) -> None:
    """Empty per-namespace runc roots the shims leave under /run/containerd/runc; /run/containerd itself
    (shim sockets live in its s/) when this run created it and it is empty again."""
    paths = [os.path.join(_SHIM_RUNC_ROOT, ns) for ns in ("kuasar-bench", "kuasar-bench-ctr")]
    if created_run_dir:
        paths += [_SHIM_RUNC_ROOT, os.path.join(_RUN_DIR, "s"), _RUN_DIR]
    for path in paths:
        if os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)


def _previous(path: str, smoke: bool) -> Optional[Dict[str, Any]]:
    """The results.json at ``path`` when it is of the same kind (full or smoke), else None."""
    try:
        with open(path) as f:
            previous = json.load(f)
    except FileNotFoundError:
        return None
    return previous if previous.get("smoke") == smoke and "sides" in previous else None


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny N for CI: checks the suite, not the numbers")
    ap.add_argument("--serial", type=int, default=100)
    ap.add_argument("--parallel", type=_ints, default=(10, 20, 50))
    ap.add_argument("--pods", type=_ints, default=(1, 5, 10, 20, 30, 50, 110))
    ap.add_argument("--steps", type=int, default=30, metavar="N",
                    help="serial runc starts timed step by step in process, next to bare runc create + start")
    ap.add_argument("--types", type=lambda s: [t for t in s.split(",") if t], default=[],
                    help="sandbox types to run (default: every installed one)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--profile", type=int, default=30, metavar="N",
                    help="after measuring, py-spy our daemons during N serial starts (at most a type's serial N; "
                         "0: off; off with --smoke)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kuasar_shared").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        raise SystemExit("run.py: needs root (runc, mounts, cgroups)")
    set_child_subreaper(True)
    os.makedirs(args.out, exist_ok=True)
    # short: unix socket paths below <work>/<type>/s/<64-hex pod id>/ must stay under 108 bytes
    work = tempfile.mkdtemp(prefix="kbench-")
    started = datetime.now(timezone.utc)
    load_before = list(os.getloadavg())
    created_run_dir = not os.path.exists(_RUN_DIR)
    try:
        results = asyncio.run(run_all(args, work))
    finally:
        daemons.unmount_below(work)
        procstats.reap_zombie_children()
        remove_cgroups()
        cleanup_shim_state(created_run_dir)
        shutil.rmtree(work, ignore_errors=True)
    results = {"benchmark": "Kuasar (Python) vs containerd shim v2: pod start latency and management memory",
               "date": started.isoformat(timespec="seconds"), "smoke": args.smoke,
               "machine": {**machine(), "loadavg_before": load_before},
               **results, "ratios": ratios(results["sides"])}
    previous = _previous(os.path.join(args.out, "results.json"), args.smoke) if args.types else None
    if previous is not None:
        results = merge(previous, results)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    report.write_markdown(results, os.path.join(args.out, "RESULTS.md"))
    if os.path.abspath(args.out) == os.path.join(HERE, "results"):
        report.write_markdown(results, os.path.join(HERE, "RESULTS.md"), image_prefix="results/")
    if not args.no_plots:
        report.write_plots(results, args.out)
    print(report.summary(results))
    return 1 if any("error" in s for s in results["sides"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
