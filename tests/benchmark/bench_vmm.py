#!/usr/bin/env python3
"""vmm benchmark: where a VM pod's start goes, management memory per pod, the guest image. As root.

    flock /tmp/kuasar-vm.lock .venv/bin/python tests/benchmark/run.py --types vmm [--no-plots]
    flock /tmp/kuasar-vm.lock .venv/bin/python tests/benchmark/bench_vmm.py [run.py options]   (the same)

A private vmm-sandboxer (+ its vmm-task-relay) boots one QEMU VM per pod from the cached guest image
(built first when its sources changed), driven by kuasar-ctl's Engine like the other sandbox types; each
pod runs one busybox ``sleep`` container. Per serial start (the sandboxer's own timings come from its
Controller.Status info, the rest from the client):

- host set-up before QEMU spawn (``start_spawn_ms``), QEMU spawn to guest agent ready (``start_agent_ms``;
  QEMU start to QMP + relay attach, ``start_qemu_ms``, happens inside it while the guest boots), SetupSandbox
  (``start_setup_ms``), the rest of the Start call, the rest of run pod (Create, Status x2), container
  create, container start and, of the latter, its task calls through the relay to the guest agent
  (Create, Start, the rest);
- total = run pod + create + start as the client sees it; management overhead = total - boot to agent,
  and of it the part spent waiting for the guest (SetupSandbox, task Create and Start).

Management PSS is vmm-sandboxer + vmm-task-relay (QEMU reported apart) at 1, 5 and 10 running pods;
growth per pod is the least-squares slope. A batch of :data:`PARALLEL` starts at once comes last
and is informational (TCG guests share 2 cores): its failure is recorded, not fatal.
Targets (issue 5): management overhead p50 <= 50 ms; management PSS growth <= 300 KB per pod.

The ``template`` variant (side ``kuasar-vmm-template``, issue 18) runs the same with ``template = "auto"``
and a private template_dir: its warm-up start makes the template, every measured start restores from it.
QEMU PSS growth per additional pod is the least-squares slope of the VMs' total PSS over the pod counts
(issue 18: <= 150 MB per idle pod with templates).

The ``pool`` variant (side ``kuasar-vmm-pool``) adds ``template_pool = 2``: before each measured start and
batch the side waits until both warm VMs are ready (:meth:`VmmSide.settle`), so each serial start is that
of a pod arriving when the pool is full; the warm VMs count as per-pod processes in the memory rows.
"""
from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import daemons  # noqa: E402
import procstats  # noqa: E402
from kuasar import REPO, KuasarSide  # noqa: E402
from workload import Groups, parallel_batch  # noqa: E402

from kuasar_shared.ctl.clients import SandboxClient, TaskClient  # noqa: E402
from kuasar_shared.ctl.engine import Engine, EngineOptions  # noqa: E402
from kuasar_vmm_sandboxer.hypervisors.qemu.pool import entries as pool_entries  # noqa: E402
from kuasar_vmm_task.image.build import default_outdir  # noqa: E402

__all__ = ["VmmSide", "TimedEngine", "breakdown", "task_steps", "summarize", "slope", "config_text", "TARGETS"]

IMAGE_DIR = default_outdir()
QEMU = "/usr/bin/qemu-system-x86_64"
#: pods started at once in the informational parallel phase
PARALLEL = 4
#: the sandboxer's wait for the guest agent; three TCG guests booting at once on 2 cores need minutes
BOOT_TIMEOUT_S = 240
#: the ``pool`` variant's template_pool, and how long a measured start waits for the pool to be full
POOL, POOL_FILL_S = 2, 120.0
#: issue 5: management overhead p50 (ms) and management PSS growth per pod (KB)
TARGETS = {"overhead_p50_ms": 50.0, "growth_pss_kb_per_pod": 300.0}

RUN_POD = "run pod (Sandbox API)"
CREATE = "create container (spec, IO)"
START = "start container (Task API)"
PRE_SPAWN = "vmm: host set-up before QEMU spawn"
AGENT = "vmm: QEMU spawn to guest agent ready"
QEMU_START = "vmm: of that, QEMU start to QMP + relay attach"
SETUP = "vmm: SetupSandbox"
START_REST = "vmm: rest of the Start call (state saved, watches)"
RUN_POD_REST = "vmm: Create, Status x2, RPCs"
TASK_CREATE = "vmm: of start, task Create (relay, guest runc create)"
TASK_START = "vmm: of start, task Start (relay, guest runc start)"
TASK_REST = "vmm: of start, Connect x2 + State round trips"
#: the steps in which neither QEMU nor the guest takes part
HOST_ONLY = (PRE_SPAWN, START_REST, RUN_POD_REST, CREATE)
#: the steps that wait for the (emulated) guest: its SetupSandbox handler and runc create/start in it
GUEST = (SETUP, TASK_CREATE, TASK_START)
#: one start in order: the vmm steps but QEMU_START (a part of AGENT) add up to run pod; with create and
#: start, to the total; the last three are parts of start
STEPS = (PRE_SPAWN, AGENT, QEMU_START, SETUP, START_REST, RUN_POD_REST, CREATE, START, TASK_CREATE, TASK_START,
         TASK_REST)


class TimedSandboxClient(SandboxClient):
    """The Engine's Controller client, keeping per sandbox the Start call's duration and the last Status info."""

    def __init__(self, socket_path: str, sandboxer: str) -> None:
        super().__init__(socket_path, sandboxer)
        self.start_ms: Dict[str, float] = {}
        self.info: Dict[str, Dict[str, str]] = {}

    async def call(self, method: str, request: Any, timeout: Optional[float] = 30.0) -> Any:
        t0 = time.perf_counter()
        response = await super().call(method, request, timeout)
        if method == "Start":
            self.start_ms[request.sandbox_id] = (time.perf_counter() - t0) * 1000
        elif method == "Status":
            self.info[request.sandbox_id] = dict(response.info)
        return response


class TimedTaskClient(TaskClient):
    """A Task API client adding each call's duration to ``sink`` (method -> ms)."""

    def __init__(self, address: str, sink: Dict[str, float]) -> None:
        super().__init__(address)
        self.sink = sink

    async def call(self, method: str, request: Any, response_type: Any, timeout: Optional[float] = 30.0) -> Any:
        t0 = time.perf_counter()
        response = await super().call(method, request, response_type, timeout)
        self.sink[method] = self.sink.get(method, 0.0) + (time.perf_counter() - t0) * 1000
        return response


class TimedEngine(Engine):
    """kuasar-ctl's Engine with timed clients: Controller Start and Status info per sandbox, task calls
    per task address (one per pod)."""

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.sandbox: TimedSandboxClient = TimedSandboxClient(options.endpoint, options.sandboxer)
        self.task_ms: Dict[str, Dict[str, float]] = {}

    def task(self, address: str) -> TaskClient:
        if address not in self._tasks:
            self._tasks[address] = TimedTaskClient(address, self.task_ms.setdefault(address, {}))
        return self._tasks[address]


def task_steps(calls: Mapping[str, float]) -> Dict[str, float]:
    """The container start's task calls (method -> summed ms) as steps.

    :raise ValueError: Create or Start is missing.
    """
    if "Create" not in calls or "Start" not in calls:
        raise ValueError(f"no task Create/Start timed for this start (got {sorted(calls)})")
    return {TASK_CREATE: calls["Create"], TASK_START: calls["Start"],
            TASK_REST: sum(ms for m, ms in calls.items() if m not in ("Create", "Start"))}


def breakdown(info: Mapping[str, str], start_call_ms: float, run_pod_ms: float) -> Dict[str, float]:
    """The run-pod part of a start from the sandboxer's status ``info`` and the client's timings.

    :raise ValueError: ``info`` lacks one of the sandboxer's start timings.
    """
    try:
        spawn, qemu, agent, setup = (float(info[f"start_{k}_ms"]) for k in ("spawn", "qemu", "agent", "setup"))
    except KeyError as err:
        raise ValueError(f"vmm-sandboxer's status info has no {err.args[0]} (got {sorted(info)})") from None
    return {PRE_SPAWN: spawn, AGENT: agent, QEMU_START: qemu, SETUP: setup,
            START_REST: start_call_ms - spawn - agent - setup, RUN_POD_REST: run_pod_ms - start_call_ms}


def slope(points: Sequence[Tuple[float, float]]) -> float:
    """Least-squares slope of ``(x, y)`` points.

    :raise ValueError: fewer than two distinct x values.
    """
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        raise ValueError(f"a slope needs two distinct x values, got {xs}")
    mx, my = sum(xs) / len(xs), sum(y for _, y in points) / len(points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)


def _p50_p90(values: Sequence[float]) -> Dict[str, float]:
    return {"p50": round(procstats.percentile(values, 50), 1), "p90": round(procstats.percentile(values, 90), 1)}


def summarize(serial: Mapping[str, Any], memory: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """The issue's numbers from the serial phase and the memory rows of one run: per-step p50/p90,
    management overhead (total - boot to agent), management PSS per pod count, its growth, the targets."""
    totals: List[float] = list(serial["samples_ms"])
    steps: Mapping[str, List[float]] = serial["steps_ms"]
    overhead = [t - a for t, a in zip(totals, steps[AGENT])]
    in_guest = [sum(v) for v in zip(*(steps[s] for s in GUEST))]
    host_only = [sum(v) for v in zip(*(steps[s] for s in HOST_ONLY))]
    out: Dict[str, Any] = {
        "starts": len(totals),
        "steps_ms": {step: _p50_p90(steps[step]) for step in STEPS},
        "total_ms": _p50_p90(totals),
        "boot_to_agent_ms": _p50_p90(steps[AGENT]),
        "overhead_ms": _p50_p90(overhead),
        "overhead_in_guest_ms": _p50_p90(in_guest),
        "host_only_steps_ms": _p50_p90(host_only),
        "management_cpu_per_start_ms": round(serial.get("cpu_per_start_ms", {}).get("management", 0.0), 1),
        "management_pss_kb": {str(r["pods"]): {k: v["pss_kb"] for k, v in r["management"].items()} for r in memory},
        "qemu_pss_kb": {str(r["pods"]): r["per_pod"]["total"]["pss_kb"] for r in memory},
        "targets": dict(TARGETS),
    }
    met = {"overhead_p50_ms": out["overhead_ms"]["p50"] <= TARGETS["overhead_p50_ms"]}
    if len({r["pods"] for r in memory}) >= 2:
        out["qemu_pss_growth_kb_per_pod"] = round(slope([(r["pods"], r["per_pod"]["total"]["pss_kb"])
                                                         for r in memory]), 1)
        growth = slope([(r["pods"], r["management"]["total"]["pss_kb"]) for r in memory])
        out["growth_pss_kb_per_pod"] = round(growth, 1)
        met["growth_pss_kb_per_pod"] = growth <= TARGETS["growth_pss_kb_per_pod"]
        # PSS moves with every other process mapping the same libraries (other Pythons on the machine);
        # RSS does not: its slope is the cross-check
        out["growth_rss_kb_per_pod"] = round(slope([(r["pods"], r["management"]["total"]["rss_kb"])
                                                    for r in memory]), 1)
    out["met"] = met
    return out


def config_text(template: str, image_dir: str, boot_timeout_s: int, vm_templates: str = "", pool: int = 0) -> str:
    """The repository's QEMU config with the guest image in ``image_dir``, a boot timeout fit for TCG
    and, with ``vm_templates`` (a directory), ``template = "auto"`` keeping its templates there and
    ``template_pool = pool`` warm VMs per class.

    :raise ValueError: the file has no ``boot_timeout_secs`` (or ``template``/``template_dir``/``template_pool``)
        line to replace.
    """
    settings = {"boot_timeout_secs": str(boot_timeout_s)}
    if vm_templates:
        settings.update(template='"auto"', template_dir=f'"{vm_templates}"', template_pool=str(pool))
    text = template.replace("/var/lib/kuasar/", image_dir.rstrip("/") + "/")
    for key, value in settings.items():
        text, n = re.subn(rf"(?m)^{key}\s*=.*$", f"{key} = {value}", text)
        if n != 1:
            raise ValueError(f"vmm-sandboxer/config_qemu.toml has no {key} line")
    return text


def warm_vms(state_dir: str) -> int:
    """Warm VMs ready in the pool of the sandboxer whose ``--dir`` is ``state_dir``."""
    return sum(bool(record.get("ready")) for record in pool_entries(state_dir).values())


def _guest_image(image_dir: str) -> Dict[str, Any]:
    """Build the guest image when its sources changed (cached otherwise); sizes and build times."""
    from kuasar_vmm_task.image.build import INITRD_NAME, KERNEL_NAME, build

    cache = os.path.join(image_dir, ".cache")
    record = build(image_dir, cache)
    t0 = time.monotonic()
    build(image_dir, cache)
    return {"dir": image_dir, "kernel_bytes": os.path.getsize(os.path.join(image_dir, KERNEL_NAME)),
            "initrd_bytes": os.path.getsize(os.path.join(image_dir, INITRD_NAME)),
            "rootfs_bytes": record.get("rootfs_bytes"), "cold_build_s": record.get("build_seconds"),
            "built_in_this_run": not record.get("cached"), "cached_build_s": round(time.monotonic() - t0, 2)}


class VmmSide(KuasarSide):
    """The harness's vmm side: the breakdown of each start in ``last_steps``, QEMU as per-pod
    infrastructure, the guest image and the parallel batch in :meth:`after_measure`."""

    engine_type = TimedEngine

    def __init__(self, profile: Any, work: str, images: str, parallel: int = PARALLEL) -> None:
        super().__init__(profile, work, images)
        self.parallel = parallel
        self.image: Dict[str, Any] = {}

    @property
    def pool(self) -> int:
        """Warm VMs the sandboxer keeps (the ``pool`` variant)."""
        return POOL if self.profile.variant == "pool" else 0

    def sandboxer_config(self) -> Optional[str]:
        templates = os.path.join(self.work, "templates") if self.profile.variant in ("template", "pool") else ""
        with open(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")) as f:
            text = config_text(f.read(), IMAGE_DIR, BOOT_TIMEOUT_S, templates, self.pool)
        path = os.path.join(self.work, "config_qemu.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    async def setup(self) -> None:
        if os.geteuid() != 0 or not os.path.exists(QEMU):
            raise RuntimeError(f"the vmm side needs root and {QEMU}")
        self.image = _guest_image(IMAGE_DIR)
        await super().setup()

    async def settle(self) -> None:
        """The ``pool`` variant: until the sandboxer's pool is full (every warm VM ``ready`` in its warm.json).

        :raise RuntimeError: not within :data:`POOL_FILL_S`.
        """
        deadline = time.monotonic() + POOL_FILL_S
        while self.pool and warm_vms(self.state) < self.pool:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: {warm_vms(self.state)} of {self.pool} warm VMs after {POOL_FILL_S} s")
            await asyncio.sleep(0.1)

    async def start_pod(self) -> str:
        pod = await super().start_pod()
        engine = self.engine
        assert isinstance(engine, TimedEngine)
        steps = dict(self.last_steps)
        steps.update(breakdown(engine.sandbox.info.pop(pod, {}), engine.sandbox.start_ms.pop(pod), steps[RUN_POD]))
        address = next((a for a in engine.task_ms if pod in a), "")
        # popped: the client keeps adding the stop's calls to its own dict, no longer listed here
        steps.update(task_steps(engine.task_ms.pop(address, {})))
        self.last_steps = steps
        return pod

    def groups(self) -> Groups:
        groups = super().groups()
        groups.per_pod = {"QEMU": groups.per_pod.get("pod processes", [])}
        return groups

    async def after_measure(self, result: Dict[str, Any]) -> None:
        await super().after_measure(result)
        result["vmm"] = {**summarize(result["serial"], result.get("memory", [])), "guest_image": self.image}
        try:
            batch = await parallel_batch(self, self.parallel)
        except Exception as err:  # informational: the serial and memory numbers stand without it
            result["vmm"]["parallel_error"] = f"{self.parallel} at once: {type(err).__name__}: {err}"
        else:
            result["parallel"].append(batch)
        procstats.reap_zombie_children()

    async def teardown(self) -> None:
        try:
            await super().teardown()
        finally:
            await daemons.kill_below(self.work)  # QEMU and the relay outlive a sandboxer that died

def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run.py --types vmm`` with the given options: one harness, one results.json."""
    import run

    return run.main(["--types", "vmm", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
