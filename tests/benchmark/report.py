"""Turn one benchmark run (results.json) into RESULTS.md tables, PNG plots and a console summary.

Everything here reads the JSON only, so a report can be regenerated from committed results
(``python tests/benchmark/report.py results/results.json``) without running anything.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

__all__ = ["TARGETS", "write_markdown", "write_plots", "summary"]

BASELINE = "containerd-shim-runc-v2"
OURS = "kuasar-runc"
#: ratio name -> (target, what it means), from issue 7
TARGETS = {
    "pss_50": (0.35, "management PSS at 50 pods"),
    "pss_110": (0.2, "management PSS at 110 pods"),
    "serial_p50": (1.0, "serial start p50"),
    "parallel_50_completion": (1.0, "parallel-50 completion time"),
}
METHOD = """## Method

- **Baseline** (`containerd-shim-runc-v2`): a private containerd 1.6 (config version 2, CRI plugin off) runs
  only so shims can publish events. Per pod, one `containerd-shim-runc-v2 -namespace … -address … -publish-binary
  … -id … start` in the bundle directory with `TTRPC_ADDRESS`, `GRPC_ADDRESS`, `NAMESPACE`, `GOMAXPROCS=2` and a
  `log` FIFO, exactly as containerd's runtime v2 manager does; then task `Create`, `Start`, `Connect` over
  `kuasar_shared.ttrpc` on the address the shim printed. Bundle: the OCI spec kuasar-ctl builds (fresh
  namespaces: no pod to join), busybox overlay rootfs, FIFO stdio copied in-process. No pause container.
- **Ours** (`kuasar-<type>`): the sandboxer on a private socket/dir, driven by `kuasar_shared.ctl.engine.Engine`
  (kuasar-ctl's library, `inline_logs`): Sandbox API Create/Start/Status×2, Platform/Status, then task
  Create/Connect/Start/Connect/State — the call sequence of containerd 2.x's CRI plugin. Pods use the host
  network; each gets its own IPC/UTS namespace holder (the baseline pods have no such sandbox).
- **`ctr run -d`**: `ctr run -d --null-io` end to end (image import, overlayfs snapshot, metadata, one shim).
- Latency: from the first client call until task Start (ours: and State) returned. Serial pods are removed in
  batches of 10. Parallel: N starts at once, `completion` = until the last one runs.
- Memory: `/proc/<pid>/smaps_rollup` 1 s after the last start, pods accumulating 1 → max.
- CPU: `/proc/<pid>/stat` deltas around each serial start (baseline: plus the rusage of the short-lived
  `shim start` process).
"""
CDF_PNG = "start-cdf.png"
MEMORY_PNG = "memory-vs-pods.png"
VMM = "kuasar-vmm"
VMM_TEMPLATE = "kuasar-vmm-template"
VMM_POOL = "kuasar-vmm-pool"
#: sides left out of the shared plots: VM boots take seconds and hundreds of MiB, flattening every other curve
_NOT_PLOTTED = (VMM, VMM_TEMPLATE, VMM_POOL)


def _mib(kb: float) -> str:
    return f"{kb / 1024:.1f}"


def _latency_row(label: str, lat: Dict[str, float], extra: str = "") -> str:
    return (f"| {label} | {lat['n']} | {lat['min']:.1f} | {lat['p50']:.1f} | {lat['p90']:.1f} | {lat['p99']:.1f} "
            f"| {lat['max']:.1f} |{extra}")


def _latency_tables(sides: Dict[str, Any]) -> List[str]:
    lines = ["## Start latency (ms, one pod = one `sleep` container, until the task is running)", "",
             "| side | n | min | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|"]
    for name, side in sides.items():
        if "serial" in side:
            lines.append(_latency_row(f"{name} serial", side["serial"]["latency_ms"]))
    lines += ["", "Parallel: N pods started at once; `completion` is the time until the last one runs.", "",
              "| side | N | completion | min | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|---|---|"]
    for name, side in sides.items():
        for run in side.get("parallel", []):
            lat = run["latency_ms"]
            lines.append(f"| {name} | {run['n']} | {run['completion_ms']:.0f} | {lat['min']:.1f} | {lat['p50']:.1f} "
                         f"| {lat['p90']:.1f} | {lat['p99']:.1f} | {lat['max']:.1f} |")
    return lines


def _memory_tables(sides: Dict[str, Any]) -> List[str]:
    lines = ["## Management-plane memory (MiB, /proc/<pid>/smaps_rollup, 1 s after the last start)", "",
             "Ours: sandboxer + its `sandbox-parent` helper + task server. Baseline: the sum of all "
             "shims. The engine daemon (containerd) and per-pod infrastructure (ours: one namespace-holder "
             "process per pod, the analogue of a pause container, which the baseline pods do not have) are "
             "reported apart.", ""]
    for name, side in sides.items():
        rows = side.get("memory")
        if not rows:
            continue
        groups = [g for g in rows[-1]["management"] if g != "total"]
        head = ["pods", "mgmt PSS", "mgmt RSS"] + [f"{g} PSS" for g in groups] + ["daemon PSS", "daemon RSS",
                                                                               "per-pod infra PSS", "processes"]
        lines += [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in rows:
            mgmt, daemon, infra = row["management"], row["daemon"]["total"], row["per_pod"]["total"]
            cells = [str(row["pods"]), _mib(mgmt["total"]["pss_kb"]), _mib(mgmt["total"]["rss_kb"])]
            cells += [_mib(mgmt.get(g, {}).get("pss_kb", 0)) for g in groups]
            cells += [_mib(daemon["pss_kb"]), _mib(daemon["rss_kb"]), _mib(infra["pss_kb"]),
                      str(mgmt["total"]["processes"])]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _cpu_table(sides: Dict[str, Any]) -> List[str]:
    lines = ["## CPU time per pod start (ms, serial phase)", "",
             "`management`: the management processes themselves (for the baseline including the short-lived "
             "`shim start` process); `children`: the runtime binaries they ran and reaped (runc create/start); "
             "`daemon`: containerd.", "", "| side | management | children | daemon |", "|---|---|---|---|"]
    for name, side in sides.items():
        cpu = side.get("serial", {}).get("cpu_per_start_ms")
        if cpu:
            lines.append(f"| {name} | {cpu['management']:.1f} | {cpu['management_children']:.1f} "
                         f"| {cpu['daemon']:.1f} |")
    return lines


def _steps_table(sides: Dict[str, Any]) -> List[str]:
    lines = ["## Where a serial start spends its time (p50 per step, ms)", "", "| side | step | p50 |", "|---|---|---|"]
    for name, side in sides.items():
        for step, ms in side.get("serial", {}).get("steps_p50_ms", {}).items():
            lines.append(f"| {name} | {step} | {ms:.1f} |")
    return lines


def _profile_tables(sides: Dict[str, Any]) -> List[str]:
    lines: List[str] = []
    for name, side in sides.items():
        prof = side.get("profile")
        if not prof:
            continue
        lines += [f"## Profile: {name}, {prof['pods']} serial starts under py-spy ({prof['rate_hz']} Hz, "
                  f"{prof['wall_s']} s)", ""]
        for proc, summary in prof["processes"].items():
            lines += [f"### {proc}: {summary['samples']} samples, ~{summary['cpu_s_per_pod'] * 1000:.0f} ms non-idle "
                      f"per pod (raw stacks: `{summary['raw']}`)", "",
                      "| self % | function | | inclusive % | function |", "|---|---|---|---|---|"]
            for own, inc in zip(summary["self"][:12], summary["inclusive"][:12]):
                lines.append(f"| {own['percent']} | `{own['function']}` | | {inc['percent']} | `{inc['function']}` |")
            lines.append("")
    return lines


def _pss_at(side: Dict[str, Any], pods: int) -> Optional[float]:
    row = next((r for r in side.get("memory", []) if r["pods"] == pods), None)
    return row["management"]["total"]["pss_kb"] if row else None


def _floor_section(results: Dict[str, Any]) -> List[str]:
    """Issue 19's table (runc against the shim, same run), every type's floor, and where it goes."""
    sides = results["sides"]
    ours, base = sides.get("kuasar-runc", {}), sides.get("containerd-shim-runc-v2", {})
    lines: List[str] = []
    if "memory" in ours and "memory" in base:
        lines += ["## runc control plane against the shim (issue 19)", "",
                  "Runtime PSS = management processes (ours: sandboxer, task server, task front, sandbox-parent; "
                  "the shim side: every shim); namespace holders are per-pod infrastructure, reported apart above.",
                  "", "| | kuasar-runc | containerd-shim-runc-v2 | ratio |", "|---|---|---|---|"]
        for pods in sorted({r["pods"] for r in ours["memory"]} & {r["pods"] for r in base["memory"]}):
            o, b = _pss_at(ours, pods), _pss_at(base, pods)
            if o is not None and b:
                lines.append(f"| runtime PSS, {pods} pod{'s' if pods > 1 else ''} | {_mib(o)} | {_mib(b)} "
                             f"| {o / b:.2f} |")
        for label, get in (("start p50, serial", lambda side: side.get("serial", {}).get("latency_ms", {}).get("p50")),
                           ("start p50, largest parallel batch", lambda side: (side.get("parallel") or [{}])[-1]
                            .get("latency_ms", {}).get("p50"))):
            o, b = get(ours), get(base)
            if o and b:
                lines.append(f"| {label} | {o:.0f} ms | {b:.0f} ms | {o / b:.2f} |")
        lines.append("")
    floors = {name: side["floor"] for name, side in sides.items() if "floor" in side}
    if floors:
        lines += ["## Floor: one pod running, management processes (PSS)", "",
                  "| type | total | " + "per process |", "|---|---|---|"]
        for name, data in floors.items():
            per = ", ".join(f"{proc} {_mib(info.get('rollup_kb', {}).get('Pss', 0))}"
                            for proc, info in data["processes"].items())
            lines.append(f"| {name} | {_mib(data['pss_kb'])} | {per} |")
        lines += ["", "Where each process's PSS goes (smaps by mapping; private dirty is what the process alone "
                  "costs):", "", "| side | process | Pss | Private_Dirty | largest mappings |", "|---|---|---|---|---|"]
        for name, data in floors.items():
            for proc, info in data["processes"].items():
                roll = info.get("rollup_kb", {})
                top = "; ".join(f"{group} {_mib(kb)}" for group, kb in list(info.get("pss_by_mapping_kb", {})
                                                                            .items())[:4])
                lines.append(f"| {name} | {proc} | {_mib(roll.get('Pss', 0))} | {_mib(roll.get('Private_Dirty', 0))} "
                             f"| {top} |")
        lines += ["", "What importing each program costs a fresh interpreter (private memory by layer, in import "
                  "order; CPU of the import):", "", "| program | private | modules | CPU | by layer |",
                  "|---|---|---|---|---|"]
        seen = set()
        for data in floors.values():
            for proc, info in data.get("imports", {}).items():
                if proc in seen or "stages" not in info:
                    continue
                seen.add(proc)
                layers = ", ".join(f"{st['import']} {_mib(st['private_kb'])}" for st in info["stages"]
                                   if st["private_kb"] >= 200)
                lines.append(f"| {proc} | {_mib(info['private_kb'])} | {info['modules']} | "
                             f"{info['import_cpu_ms']:.0f} ms | {layers} |")
        lines.append("")
    steps = ours.get("start_steps")
    if steps and "p50_ms" in steps:
        engine = ours.get("serial", {}).get("steps_p50_ms", {})
        lines += [f"## A serial runc pod start, step by step ({steps['rounds']} rounds in process, p50 ms)", "",
                  "The same sandboxer and task-server code run in one process with each step timed "
                  "(tests/benchmark/startsteps.py); the Engine columns are the same starts through the sockets "
                  "(the serial phase above). Engine minus in process = engine round trips.", "",
                  "| step | p50 ms |", "|---|---|"]
        lines += [f"| {step} | {ms:.2f} |" for step, ms in steps["p50_ms"].items()]
        for label, key in (("Engine: run pod (Sandbox API calls, netns, CRI bookkeeping)", "run pod (Sandbox API)"),
                           ("Engine: of which Sandbox API Create + Start (client-timed)",
                            "of which Sandbox API Create + Start"),
                           ("Engine: container spec, FIFOs (client side)", "create container (spec, IO)"),
                           ("Engine: start container (task Create, Connect, Start, Connect, State)",
                            "start container (Task API)"),
                           ("Engine: of which task Create + Start (client-timed)", "of which task Create + Start")):
            if key in engine:
                lines.append(f"| {label} | {engine[key]:.2f} |")
        pod, task = engine.get("of which Sandbox API Create + Start"), engine.get("of which task Create + Start")
        bare = steps["p50_ms"].get("bare runc create + start")
        lines += ["", "| target (issue 19) | measured | met |", "|---|---|---|"]
        if pod is not None:
            lines.append(f"| pod step (Sandbox API Create + Start) p50 <= 10 ms | {pod:.1f} ms | {_met(pod <= 10)} |")
        if task is not None and bare is not None:
            lines.append(f"| container task Create + Start p50 <= bare runc create + start + 10 ms | {task:.1f} ms "
                         f"vs {bare:.1f} + 10 ms | {_met(task <= bare + 10)} |")
        floor_kb = sides.get("kuasar-runc", {}).get("floor", {}).get("pss_kb")
        if floor_kb:
            lines.append(f"| runc floor (1 pod) <= 35 MB | {_mib(floor_kb)} MiB | {_met(floor_kb / 1024 <= 35)} |")
        o, b = _pss_at(ours, 50), _pss_at(base, 50)
        if o is not None and b:
            lines.append(f"| PSS at 50 pods <= 0.15x the shims | {o / b:.2f}x | {_met(o / b <= 0.15)} |")
        lines.append("")
    elif steps:
        lines += ["## Start steps failed", "", "```", steps.get("error", ""), "```", ""]
    return lines


def _ratio_label(key: str) -> str:
    if key in TARGETS:
        return TARGETS[key][1]
    if key.startswith("pss_with_pod_infra_"):
        return f"PSS at {key.rsplit('_', 1)[1]} pods incl. per-pod infrastructure"
    if key.startswith("pss_"):
        return f"management PSS at {key[4:]} pods"
    if key.startswith("parallel_"):
        return f"parallel-{key.split('_')[1]} completion time"
    return key


def _ratio_order(key: str) -> tuple:
    digits = "".join(c for c in key if c.isdigit())
    return (key not in TARGETS, key.startswith("pss_with"), key.split("_")[0], int(digits or 0))


def _ratio_table(results: Dict[str, Any]) -> List[str]:
    lines = [f"## Ratios ours/baseline ({OURS} / {BASELINE}, same run)", "",
             "| ratio | measured | target | met |", "|---|---|---|---|"]
    for key in sorted(results.get("ratios", {}), key=_ratio_order):
        value = results["ratios"][key]
        target, label = TARGETS.get(key, (None, _ratio_label(key)))
        met = "" if target is None else ("yes" if value <= target else "**no**")
        lines.append(f"| {label} | {value:.2f} | {'' if target is None else f'<= {target}'} | {met} |")
    return lines


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _vmm_section(results: Dict[str, Any], name: str = VMM) -> List[str]:
    """Issue 5's numbers for VM pods (side ``name``: cold boots, or restores from VM templates): the start
    broken down, the targets, memory per pod, the guest image."""
    side = results["sides"].get(name, {})
    vmm = side.get("vmm")
    if not vmm:
        return []
    run = results.get("updates", {}).get(name)
    how = "started from VM templates" if name == VMM_TEMPLATE else "cold boot"
    lines = [f"## {name}: VM pods, {how} (QEMU TCG, no KVM on this machine)", ""]
    if run:
        lines += [f"Measured in a separate run on {run['date']}; load average (1/5/15 min) "
                  + " / ".join(f"{v:.1f}" for v in run["loadavg_before"]) + " before, "
                  + " / ".join(f"{v:.1f}" for v in run["loadavg_after"]) + " after.", ""]
    t, met = vmm["targets"], vmm["met"]
    lines += [f"Targets (issue 5), {vmm['starts']} serial starts:", "", "| what | measured | target | met |",
              "|---|---|---|---|",
              f"| management overhead p50 (total - guest boot to agent) | {vmm['overhead_ms']['p50']:.1f} ms "
              f"| <= {t['overhead_p50_ms']:.0f} ms | {_met(met['overhead_p50_ms'])} |"]
    if "growth_pss_kb_per_pod" in vmm:
        lines.append(f"| management PSS growth per pod (vmm-sandboxer + vmm-task-relay) "
                     f"| {vmm['growth_pss_kb_per_pod']:.0f} KB | <= {t['growth_pss_kb_per_pod']:.0f} KB "
                     f"| {_met(met['growth_pss_kb_per_pod'])} |")
        lines.append(f"| (cross-check: RSS growth per pod; PSS shifts with other processes sharing libraries) "
                     f"| {vmm['growth_rss_kb_per_pod']:.0f} KB | | |")
    lines += ["", "Where a serial start goes (ms). The sandboxer reports its own spans in Controller.Status "
              "(`start_spawn_ms`, `start_agent_ms` = QEMU spawn to agent ready, with `start_qemu_ms` = QEMU start "
              "to QMP + relay attach inside it, as the guest boots meanwhile, `start_setup_ms`). Under TCG every "
              "guest-side step (SetupSandbox, task Create/Start: runc in the guest) runs emulated; the host-only "
              "steps are the Python host path alone.", "",
              "| step | p50 | p90 |", "|---|---|---|"]
    for step, v in vmm["steps_ms"].items():
        lines.append(f"| {step} | {v['p50']:.1f} | {v['p90']:.1f} |")
    for label, key in (("**total** (run pod + create + start, client)", "total_ms"),
                       ("QEMU spawn to guest agent ready", "boot_to_agent_ms"),
                       ("**management overhead** (total - boot to agent)", "overhead_ms"),
                       ("of it, waiting for the guest (SetupSandbox, runc create/start)", "overhead_in_guest_ms"),
                       ("host-only steps (no QEMU or guest in them)", "host_only_steps_ms")):
        lines.append(f"| {label} | {vmm[key]['p50']:.1f} | {vmm[key]['p90']:.1f} |")
    lines += ["", f"CPU time of vmm-sandboxer + vmm-task-relay per serial start (boot wait included): "
              f"{vmm['management_cpu_per_start_ms']:.0f} ms."]
    lines += ["", "Memory (KiB PSS): management = vmm-sandboxer + vmm-task-relay; QEMU (the VMs) apart.", "",
              "| pods | management | vmm-sandboxer | vmm-task-relay | QEMU total | QEMU per VM |",
              "|---|---|---|---|---|---|"]
    for pods, mgmt in vmm["management_pss_kb"].items():
        qemu = vmm["qemu_pss_kb"][pods]
        lines.append(f"| {pods} | {mgmt['total']} | {mgmt.get('vmm-sandboxer', 0)} | {mgmt.get('vmm-task-relay', 0)} "
                     f"| {qemu} | {qemu / int(pods):.0f} |")
    if "qemu_pss_growth_kb_per_pod" in vmm:
        lines += ["", f"QEMU PSS per additional pod (slope over the pod counts): "
                  f"{vmm['qemu_pss_growth_kb_per_pod'] / 1024:.0f} MiB."]
    image = vmm.get("guest_image")
    if image:
        lines += ["", f"Guest image (`{image['dir']}`): vmlinux.bin {_mib(image['kernel_bytes'] / 1024)} MiB, "
                  f"kuasar.initrd {_mib(image['initrd_bytes'] / 1024)} MiB (uncompressed cpio; rootfs files "
                  f"{_mib((image.get('rootfs_bytes') or 0) / 1024)} MiB); cold build {image['cold_build_s']} s "
                  + ("(in this run)" if image["built_in_this_run"] else "(recorded by the last build)")
                  + f", cached (up-to-date check) {image['cached_build_s']} s."]
    lines.append("")
    for p in side.get("parallel", []):
        lines.append(f"Parallel (informational): {p['n']} pods at once completed in {p['completion_ms'] / 1000:.1f} s "
                     f"(latency p50 {p['latency_ms']['p50'] / 1000:.1f} s, p90 "
                     f"{p['latency_ms'].get('p90', p['latency_ms']['max']) / 1000:.1f} s, "
                     f"max {p['latency_ms']['max'] / 1000:.1f} s).")
    if "parallel_error" in vmm:
        lines.append(f"Parallel (informational) failed: {vmm['parallel_error']}")
    return lines + [""]


#: bench_cri.py's report, beside this one in the results directory
CRI_REPORT = "cri.md"


def write_markdown(results: Dict[str, Any], path: str, image_prefix: str = "") -> None:
    """Write the report to ``path``; plots are linked as ``<image_prefix><name>.png``."""
    m = results["machine"]
    versions: Dict[str, str] = {}
    for side in results["sides"].values():
        versions.update(side.get("versions", {}))
    lines = ["# Benchmark: Kuasar (Python) vs containerd shim v2", "",
             f"Generated by `tox -e bench` (tests/benchmark/run.py) on {results['date']}"
             + (" — **smoke run, numbers meaningless**" if results.get("smoke") else "") + ".", "",
             f"Machine: {m.get('os', '?')}, kernel {m['kernel']}, {m['cpus']} CPUs ({m.get('cpu_model', '?')}), "
             f"{m.get('memory_gib', '?')} GiB, Python {m['python']}.", "", "Versions:", ""]
    lines += [f"- {k}: `{v}`" for k, v in sorted(versions.items())]
    lines += ["", "Plans (serial N, parallel batch sizes, pod counts for memory):", ""]
    lines += [f"- {k}: serial {p['serial']}, parallel {p['parallel']}, pods {p['pods']}"
              for k, p in results.get("plans", {}).items()]
    errors = {k: s["error"] for k, s in results["sides"].items() if "error" in s}
    if errors:
        lines += ["", "Failed sides:", ""] + [f"- {k}: {v}" for k, v in errors.items()]
    load = m.get("loadavg_before")
    if load:
        lines += ["", f"Load average (1/5/15 min) when the run started: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                  f"on {m['cpus']} CPUs; when it ended: "
                  + " / ".join(f"{v:.1f}" for v in m.get("loadavg_1_5_15", [])) + "."]
    updates = results.get("updates", {})
    if updates:
        lines += ["", "Measured in a later run (see their sections): "
                  + ", ".join(f"{k} ({v['date']})" for k, v in sorted(updates.items())) + "."]
    lines += ["", "This run drives Debian's containerd 1.6 shim and our sandboxers with the same client library. "
              "The issues' own method, a containerd 2.3.4 + crictl beside its runc shim (bench_cri.py), is "
              f"reported in [{CRI_REPORT}]({image_prefix}{CRI_REPORT}) and [cri-vmm.md]({image_prefix}cri-vmm.md); "
              f"issue 19's runc targets, each step included, in one run of it in "
              f"[cri-steps.md]({image_prefix}cri-steps.md)."]
    lines += [""] + _floor_section(results) + _ratio_table(results) + [""] + _latency_tables(results["sides"]) + [""]
    lines += _steps_table(results["sides"]) + [""] + _memory_tables(results["sides"]) + _cpu_table(results["sides"])
    lines += [""] + _profile_tables(results["sides"]) + _vmm_section(results)
    lines += _vmm_section(results, VMM_TEMPLATE) + [METHOD]
    lines += ["", f"![start-time CDF]({image_prefix}{CDF_PNG})", "", f"![memory vs pods]({image_prefix}{MEMORY_PNG})",
              ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_plots(results: Dict[str, Any], out_dir: str) -> None:
    """Start-time CDF (serial and the largest parallel batch) and management PSS/RSS vs pods."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = {k: v for k, v in results["sides"].items() if "error" not in v and k not in _NOT_PLOTTED}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, phase in zip(axes, ("serial", "parallel")):
        for name, side in sides.items():
            if phase == "serial":
                samples = side.get("serial", {}).get("samples_ms")
                label = name
            else:
                runs = side.get("parallel") or [{}]
                samples, label = runs[-1].get("samples_ms"), f"{name} (N={runs[-1].get('n')})"
            if samples:
                xs = sorted(samples)
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label)
        ax.set_xlabel("pod start latency (ms)")
        ax.set_ylabel("fraction of pods")
        ax.set_title(f"start-time CDF, {phase}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, CDF_PNG), dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key in zip(axes, ("pss_kb", "rss_kb")):
        for name, side in sides.items():
            rows = side.get("memory")
            if rows:
                ax.plot([r["pods"] for r in rows], [r["management"]["total"][key] / 1024 for r in rows], "o-",
                        label=f"{name} management")
                if any(r["per_pod"]["total"][key] for r in rows):
                    ax.plot([r["pods"] for r in rows],
                            [(r["management"]["total"][key] + r["per_pod"]["total"][key]) / 1024 for r in rows], ":",
                            label=f"{name} management + per-pod infra")
                if any(r["daemon"]["total"][key] for r in rows):
                    ax.plot([r["pods"] for r in rows], [r["daemon"]["total"][key] / 1024 for r in rows], "x--",
                            label=f"{name} daemon (containerd)")
        ax.set_xlabel("running pods")
        ax.set_ylabel(f"{key[:3].upper()} (MiB)")
        ax.set_title(f"management {key[:3].upper()} vs pods")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, MEMORY_PNG), dpi=110)
    plt.close(fig)


def summary(results: Dict[str, Any]) -> str:
    """A few lines for the console: per side serial p50 and PSS at the largest pod count; the ratios."""
    lines = []
    for name, side in results["sides"].items():
        if "error" in side:
            lines.append(f"{name}: FAILED {side['error']}")
            continue
        parts = [name + ":"]
        if "serial" in side:
            parts.append(f"serial p50 {side['serial']['latency_ms']['p50']:.1f} ms")
        for run in side.get("parallel", []):
            parts.append(f"parallel-{run['n']} {run['completion_ms']:.0f} ms")
        if side.get("memory"):
            last = side["memory"][-1]
            parts.append(f"PSS@{last['pods']} {_mib(last['management']['total']['pss_kb'])} MiB")
        vmm = side.get("vmm")
        if vmm:
            parts.append(f"overhead p50 {vmm['overhead_ms']['p50']:.1f} ms")
            if "growth_pss_kb_per_pod" in vmm:
                parts.append(f"growth {vmm['growth_pss_kb_per_pod']:.0f} KB/pod")
        lines.append(" ".join(parts))
    lines += [f"ratio {k}: {v:.2f}" for k, v in sorted(results.get("ratios", {}).items())]
    return "\n".join(lines)


if __name__ == "__main__":
    with open(sys.argv[1]) as fh:
        loaded = json.load(fh)
    out = os.path.dirname(os.path.abspath(sys.argv[1]))
    write_markdown(loaded, os.path.join(out, "RESULTS.md"))
    if os.path.basename(out) == "results":
        write_markdown(loaded, os.path.join(os.path.dirname(out), "RESULTS.md"), image_prefix="results/")
    write_plots(loaded, out)
    print(summary(loaded))
