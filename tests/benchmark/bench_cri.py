#!/usr/bin/env python3
"""Our sandbox types beside containerd's runc shim, both through a real containerd 2.x + crictl (issues 17, 19).

    sudo .venv/bin/python tests/benchmark/bench_cri.py [--types runc,wasm,wasm-touch64,quark] [--serial 30]
        [--parallel 15] [--pods 1,10,50,110] [--out tests/benchmark/results/cri.json]

The issues' tables were measured this way: ``crictl run`` (RunPodSandbox + CreateContainer +
StartContainer) of one pod with one container, serial rounds then a batch at once, and the runtime's PSS
(smaps_rollup) with 1, 10, 50 and 110 pods running. One private containerd (cri.py) serves the baseline
handler ``runc`` (one containerd-shim-runc-v2 per pod, busybox ``sleep``) and ``kuasar-<type>`` for each
type named (runc and quark: busybox ``sleep``; wasm: a WASI module sleeping in poll_oneoff), one side after
the other in the same run. Runtime PSS: the shims, against our sandboxer + task server + task front +
helpers; a second row adds each side's per-pod processes (the baseline's pause containers; our namespace
holders, the wasm fork-server and runners), which issue 17 counts for wasm. containerd is reported
apart. ``wasm-touch64`` adds a wasm side whose module touches 64 MiB of linear memory (memory only, up to 50
pods). Prints a table per type with the ratios the issues set targets for, and writes JSON, a markdown report
(``<out>.md``) and an SVG plot of PSS against pods (``<out>-memory.svg``).
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import bench_vmm  # noqa: E402
import cri  # noqa: E402
import kuasar  # noqa: E402
import procstats  # noqa: E402
import run  # noqa: E402
from workload import Plan, Side, measure, parallel_batch  # noqa: E402

log = logging.getLogger("bench-cri")
DEFAULT_OUT = os.path.join(HERE, "results", "cri.json")
#: what each type's issue compares (issue 17: wasm, issue 19: runc and quark)
#: (wasm counts its fork-server and runners: issue 17's "sandboxer + wasm-task + fork-server + all runners")
TARGETS = {"runc": {"pss_50": 0.15}, "wasm": {"pss_infra_50": 0.35, "pss_infra_110": 0.2, "serial_p50": 0.6}}
#: extra sides: name -> (sandbox type, profile changes); memory only, at the pod counts up to 50
#: (110 x 64 MiB of linear memory would measure the machine, not the runtime)
VARIANTS = {"wasm-touch64": ("wasm", {"image": "wasm-touch64", "command": ("/touch64.wat",), "files": (),
                                      "variant": "touch64"})}
_VARIANT_MAX_PODS = 50
#: the step rounds wait for the 1-minute load to fall below this, at most this many seconds
_QUIET_LOAD, _QUIET_WAIT_S = 1.5, 90.0
#: issue 19's step targets (ms): the pod step, and the container step over bare runc
STEP_TARGETS_MS = {"pod": 10.0, "container_over_bare": 10.0}


class CriVmmSide(cri.CriKuasarSide, bench_vmm.VmmSide):
    """kuasar-vmm through CRI (issue 18): bench_vmm's sandboxer config (cold, or templates for
    ``vmm-template``), guest image and QEMU grouping; starts timed as whole ``crictl run`` calls. The batch of
    starts at once is informational, as in bench_vmm: its failure is recorded, the serial numbers stand."""

    async def after_measure(self, result: Dict[str, Any]) -> None:
        await kuasar.KuasarSide.after_measure(self, result)
        try:
            result["parallel"].append(await parallel_batch(self, self.parallel))
        except Exception as err:  # noqa: BLE001 - recorded in the JSON
            result["parallel_error"] = f"{self.parallel} at once: {type(err).__name__}: {err}"
        procstats.reap_zombie_children()


def _pss_mb(side: Dict[str, Any], pods: int, infra: bool = False) -> Optional[float]:
    """Management PSS at ``pods`` (with ``infra``: plus per-pod processes, pause/holders/fork-server/runners)."""
    row = next((r for r in side.get("memory", []) if r["pods"] == pods), None)
    if row is None:
        return None
    return (row["management"]["total"]["pss_kb"] + (row["per_pod"]["total"]["pss_kb"] if infra else 0)) / 1024


def compare(base: Dict[str, Any], ours: Dict[str, Any]) -> Dict[str, Any]:
    """ours / baseline for start p50 (serial, parallel) and runtime PSS at each pod count both measured."""
    out: Dict[str, Any] = {}
    if "serial" in base and "serial" in ours:
        out["serial_p50"] = ours["serial"]["latency_ms"]["p50"] / base["serial"]["latency_ms"]["p50"]
    for o in ours.get("parallel", []):
        for b in base.get("parallel", []):
            if o["n"] == b["n"]:
                out[f"parallel_{o['n']}_p50"] = o["latency_ms"]["p50"] / b["latency_ms"]["p50"]
    for row in ours.get("memory", []):
        for key, infra in (("pss", False), ("pss_infra", True)):
            b, o = _pss_mb(base, row["pods"], infra), _pss_mb(ours, row["pods"], infra)
            if b and o is not None:
                out[f"{key}_{row['pods']}"] = o / b
    rows = ours.get("memory", [])
    if len(rows) >= 2:
        first, last = rows[-2]["pods"], rows[-1]["pods"]
        for key, infra in (("per_pod_kb", False), ("per_pod_infra_kb", True)):
            growth = (_pss_mb(ours, last, infra) or 0.0) - (_pss_mb(ours, first, infra) or 0.0)
            out[key] = growth * 1024 / (last - first)
    return out


def table(base: Dict[str, Any], ours: Dict[str, Any], ratios: Dict[str, Any], sandbox_type: str) -> str:
    """The issues' table: ours, the shim, ratio (and the target where one is set)."""
    targets = TARGETS.get(sandbox_type, {})
    lines = [f"| | {ours['side']} | {base['side']} | ratio |", "|---|---|---|---|"]

    def row(label: str, o: Optional[float], b: Optional[float], key: str, unit: str) -> None:
        if o is None:
            return
        target = f" (target ≤ {targets[key]})" if key in targets else ""
        shown = f"{b:.1f} {unit}" if b is not None else "not measured"
        ratio = f"{ratios[key]:.2f}" if key in ratios else "-"
        lines.append(f"| {label} | {o:.1f} {unit} | {shown} | {ratio}{target} |")

    row("start p50 serial", ours.get("serial", {}).get("latency_ms", {}).get("p50"),
        base.get("serial", {}).get("latency_ms", {}).get("p50"), "serial_p50", "ms")
    for o in ours.get("parallel", []):
        b = next((b for b in base.get("parallel", []) if b["n"] == o["n"]), None)
        row(f"start p50 with {o['n']} at once", o["latency_ms"]["p50"], b["latency_ms"]["p50"] if b else None,
            f"parallel_{o['n']}_p50", "ms")
    for r in ours.get("memory", []):
        row(f"runtime PSS at {r['pods']} pods", _pss_mb(ours, r["pods"]), _pss_mb(base, r["pods"]),
            f"pss_{r['pods']}", "MiB")
    for r in ours.get("memory", []):
        row(f"with per-pod processes at {r['pods']} pods", _pss_mb(ours, r["pods"], True),
            _pss_mb(base, r["pods"], True), f"pss_infra_{r['pods']}", "MiB")
    for key, label in (("per_pod_kb", "runtime"), ("per_pod_infra_kb", "with per-pod processes")):
        if key in ratios:
            lines.append(f"| PSS per additional pod, {label} (last two counts) | {ratios[key]:.0f} KiB | | |")
    return "\n".join(lines)


def steps_table(steps: Dict[str, Any]) -> str:
    """Issue 19's step targets from one side's ``steps``: client-timed calls, then where each ms goes."""
    engine, breakdown = steps["engine"]["p50_ms"], steps["breakdown"]
    load = " / ".join(f"{x:.1f}" for x in steps["engine"]["loadavg_before"])
    lines = [f"Steps, {steps['engine']['rounds']} serial starts through the sandboxer's sockets (load {load} "
             "before), p50:", "", "| step | measured | target |", "|---|---|---|",
             f"| pod: Sandbox API Create + Start | {engine[kuasar.SANDBOX_STEP]:.2f} ms | "
             f"≤ {STEP_TARGETS_MS['pod']:.0f} ms |"]
    bare = engine[cri.BARE_STEP]
    lines.append(f"| container: task Create + Start | {engine[kuasar.TASK_STEP]:.2f} ms = bare `runc create && runc "
                 f"start` of the same spec {bare:.2f} ms {engine[kuasar.TASK_STEP] - bare:+.2f} ms | ≤ bare + "
                 f"{STEP_TARGETS_MS['container_over_bare']:.0f} ms |")
    if "error" in breakdown:
        return "\n".join(lines + ["", f"step breakdown failed: {breakdown['error']}"])
    lines += ["", f"In process, step by step ({breakdown['rounds']} rounds, p50 ms; bare runc here runs the "
              "in-process spec, without the pod's /etc files):", "", "| step | ms |", "|---|---|"]
    lines += [f"| {step} | {ms:.2f} |" for step, ms in breakdown["p50_ms"].items()]
    return "\n".join(lines)


async def _quiet(limit: float = _QUIET_LOAD, wait_s: float = _QUIET_WAIT_S) -> None:
    """Wait (at most ``wait_s``) for the 1-minute load to fall below ``limit``: the step timings of issue 19
    are about our code, not about the previous side's 110 pods still being torn down."""
    for _ in range(int(wait_s)):
        if os.getloadavg()[0] < limit:
            return
        await asyncio.sleep(1)


async def runc_steps(side: cri.CriKuasarSide, rounds: int, work: str) -> Dict[str, Any]:
    """Issue 19's two step targets in the same run as its memory: the pod and container steps through the
    sockets of the sandboxer that served the CRI run, then the in-process breakdown of each step and bare
    ``runc create && runc start`` of the same container (startsteps.py)."""
    await _quiet()
    log.info("%s: %d serial starts through the Sandbox API and Task API, then step by step", side.name, rounds)
    return {"engine": await side.engine_steps(rounds),
            "breakdown": await run.start_steps(os.path.join(work, "steps"), side.images, rounds)}


async def _run_side(side: Side, plan: Plan, steps: int = 0, work: str = "") -> Dict[str, Any]:
    try:
        await side.setup()
        result = await measure(side, plan)
        if steps and isinstance(side, cri.CriKuasarSide) and side.profile.sandbox_type == "runc":
            result["steps"] = await runc_steps(side, steps, work)
        return result
    except Exception as err:  # noqa: BLE001 - a failed side is reported, the others still run
        log.exception("%s failed", side.name)
        return {"side": side.name, "error": repr(err), "diagnostics": side.diagnostics()}
    finally:
        await side.teardown()


async def bench(types: List[str], plan: Plan, bin_dir: str, work: str, steps: int = 0) -> Dict[str, Any]:
    """Every side in turn under ``work`` (removed afterwards, with every process, mount and cgroup)."""
    installed = {p.sandbox_type + (f"-{p.variant}" if p.variant else ""): p for p in kuasar.available_profiles()}
    profiles: Dict[str, kuasar.Profile] = {}
    for name in types:
        base_name, changes = VARIANTS.get(name, (name, {}))
        if base_name not in installed:
            raise SystemExit(f"--types: {name!r} is not an installed sandbox type or variant "
                             f"({', '.join(sorted(installed) + sorted(VARIANTS)) or 'none'})")
        profiles[name] = dataclasses.replace(installed[base_name], **changes)
    os.makedirs(work)
    node = cri.CriNode(work, sorted({p.sandbox_type for p in profiles.values()}), bin_dir)
    result: Dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": run.machine(), "plan": plan.__dict__, "sides": {}, "ratios": {}}
    sides: List[tuple[Side, Plan]] = []
    try:
        await node.setup()
        result["versions"] = node.versions()
        sides.append((cri.CriShimSide(node), plan))
        variant_plan = Plan(serial=0, parallel=(), pods=tuple(n for n in plan.pods if n <= _VARIANT_MAX_PODS),
                            warmup=1)
        for index, (name, profile) in enumerate(profiles.items()):
            # short state dirs: QEMU's sockets go to <dir>/s/<64-hex pod id>/, and a unix path has 107 bytes
            side_work = os.path.join(work, str(index))
            if profile.sandbox_type == "vmm":  # seconds per start under TCG: the profile's small plan
                vmm_plan = Plan(serial=min(plan.serial, profile.plan.serial), parallel=(), warmup=1,
                                pods=tuple(n for n in profile.plan.pods if n <= max(plan.pods, default=0)))
                sides.append((CriVmmSide(profile, side_work, node), vmm_plan))
            else:
                sides.append((cri.CriKuasarSide(profile, side_work, node),
                              variant_plan if name in VARIANTS else plan))
        for side, side_plan in sides:
            log.info("side %s", side.name)
            result["sides"][side.name] = await _run_side(side, side_plan, steps, work)
            procstats.reap_zombie_children()
    finally:
        await node.teardown()
        run.remove_cgroups([node.cgroup_parent, *sorted({side.cgroup_parent for side, _ in sides
                                                          if isinstance(side, kuasar.KuasarSide)})])
        shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    base = result["sides"][cri.CriShimSide.name]
    for name in types:
        ours = result["sides"].get(f"kuasar-{name} (CRI)", {})
        if "error" not in base and "error" not in ours:
            result["ratios"][name] = compare(base, ours)
    return result


def markdown(result: Dict[str, Any], plot: str) -> str:
    """RESULTS-style section: the run's conditions, a table per type, the plot."""
    machine = result["machine"]
    lines = [f"# Through containerd + crictl (bench_cri.py), {result['date']}", "",
             f"Machine: {machine.get('os', '')}, {machine.get('cpus')} CPUs, {machine.get('memory_gib')} GiB; "
             f"load {' / '.join(f'{x:.1f}' for x in machine['loadavg_1_5_15'])} at the start, "
             f"{' / '.join(f'{x:.1f}' for x in machine['loadavg_after'])} at the end.", "",
             *[f"- {name}: `{text.splitlines()[0] if text else ''}`"
               for name, text in result.get("versions", {}).items()],
             "", f"Plan: {result['plan']}", ""]
    base = result["sides"].get(cri.CriShimSide.name, {})
    for name, ratios in result["ratios"].items():
        ours = result["sides"][f"kuasar-{name} (CRI)"]
        lines += [f"## {name}", "", table(base, ours, ratios, name), ""]
        if "steps" in ours:
            lines += [steps_table(ours["steps"]), ""]
    for name, side in result["sides"].items():
        if "error" in side:
            lines += [f"**{name} failed**: {side['error']}", ""]
    lines += [f"![runtime PSS vs running pods]({plot})", ""]
    return "\n".join(lines)


def svg_plot(result: Dict[str, Any]) -> str:
    """Runtime PSS with per-pod processes against running pods, one line per side (no plotting library)."""
    series = {name: [(r["pods"], (r["management"]["total"]["pss_kb"] + r["per_pod"]["total"]["pss_kb"]) / 1024)
                     for r in side.get("memory", [])] for name, side in result["sides"].items() if side.get("memory")}
    width, height, left, bottom = 720, 400, 70, 40
    max_x = max((x for points in series.values() for x, _ in points), default=1)
    max_y = max((y for points in series.values() for _, y in points), default=1.0) * 1.1
    colors = ["#444", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]

    def at(x: float, y: float) -> str:
        return (f"{left + x / max_x * (width - left - 20):.1f},"
                f"{height - bottom - y / max_y * (height - bottom - 20):.1f}")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<polyline points="{at(0, max_y)} {at(0, 0)} {at(max_x, 0)}" fill="none" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 8}" text-anchor="middle">running pods</text>',
             f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">'
             'runtime PSS with per-pod processes (MiB)</text>']
    for tick in range(0, 6):
        x, y = max_x * tick / 5, max_y * tick / 5
        parts.append(f'<text x="{at(x, 0).split(",")[0]}" y="{height - bottom + 15}" text-anchor="middle">'
                     f'{x:.0f}</text>')
        parts.append(f'<text x="{left - 5}" y="{at(0, y).split(",")[1]}" text-anchor="end">{y:.0f}</text>')
    for index, (name, points) in enumerate(series.items()):
        color = colors[index % len(colors)]
        parts.append(f'<polyline points="{" ".join(at(x, y) for x, y in points)}" fill="none" stroke="{color}" '
                     'stroke-width="2"/>')
        parts.append(f'<text x="{left + 10}" y="{20 + 15 * index}" fill="{color}">{name}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", default="runc,wasm,quark", help="comma-separated sandbox types")
    parser.add_argument("--serial", type=int, default=30)
    parser.add_argument("--parallel", type=run._ints, default=(15,))
    parser.add_argument("--pods", type=run._ints, default=(1, 10, 50, 110))
    parser.add_argument("--steps", type=int, default=30, help="runc: serial starts timed step by step through "
                        "the sandboxer's sockets and in process, beside bare runc (0: none)")
    parser.add_argument("--cri-bin", default=cri.CRI_BIN, help="directory of containerd, ctr, crictl and the shim")
    parser.add_argument("--out", default=DEFAULT_OUT)
    parser.add_argument("--work", default="", help="a directory to create and remove (default: a new one in /tmp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if os.geteuid() != 0:
        parser.error("must run as root")
    reason = cri.missing_tools(args.cri_bin)
    if reason:
        parser.error(reason)
    types = [t for t in args.types.split(",") if t]
    plan = Plan(serial=args.serial, parallel=args.parallel, pods=args.pods, warmup=2)
    work = args.work or os.path.join(tempfile.mkdtemp(prefix="kcri-", dir="/tmp"), "w")
    result = asyncio.run(bench(types, plan, args.cri_bin, work, args.steps))
    if not args.work:
        os.rmdir(os.path.dirname(work))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)
    stem = os.path.splitext(os.path.abspath(args.out))[0]
    with open(stem + "-memory.svg", "w") as handle:
        handle.write(svg_plot(result))
    with open(stem + ".md", "w") as handle:
        handle.write(markdown(result, os.path.basename(stem) + "-memory.svg"))
    base = result["sides"][cri.CriShimSide.name]
    failed = [name for name, side in result["sides"].items() if "error" in side]
    for name in types:
        ours = result["sides"].get(f"kuasar-{name} (CRI)", {})
        if name in result["ratios"]:
            print(f"\n### {name}\n" + table(base, ours, result["ratios"][name], name))
            if "steps" in ours:
                print("\n" + steps_table(ours["steps"]))
    for name in failed:
        print(f"\n{name} FAILED: {result['sides'][name]['error']}")
    print(f"\nload {result['machine']['loadavg_1_5_15']} -> {result['machine']['loadavg_after']}; JSON: {args.out}, "
          f"report {stem}.md")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
