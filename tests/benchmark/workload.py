"""The measurement plan, written once and run against every side (baseline shim v2, ours per type).

A :class:`Side` knows how to start and remove one pod (one ``sleep`` container) and which processes
are its management plane; :func:`measure` runs the same phases on each side:

1. warm-up (page cache, imports, first connections), not recorded;
2. serial starts (N): latency per pod, and CPU time of the management processes per start;
3. parallel starts (10, 20, 50 at once): latency of each pod and completion time of the batch;
4. memory at 1/5/10/20/30/50/110 running pods: PSS/RSS of the management plane, of the daemon
   and of per-pod infrastructure, each group reported on its own;
5. whatever the side adds in :meth:`Side.after_measure` (vmm: the start breakdown, a parallel batch).
"""
from __future__ import annotations

import abc
import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

import procstats

__all__ = ["Plan", "SMOKE", "Side", "measure", "parallel_batch"]

log = logging.getLogger(__name__)
#: pods kept running during the serial phase before they are removed in one batch
_SERIAL_BATCH = 10
#: settle time before memory is read (lazy page faults, GC)
_SETTLE_S = 1.0


@dataclass(frozen=True)
class Plan:
    serial: int = 100
    parallel: Sequence[int] = (10, 20, 50)
    pods: Sequence[int] = (1, 5, 10, 20, 30, 50, 110)
    warmup: int = 2


#: the CI plan: exercises every phase, says nothing about performance
SMOKE = Plan(serial=3, parallel=(2,), pods=(1, 2), warmup=1)


@dataclass
class Groups:
    """Process groups of one side at one moment: name -> pids."""

    management: Dict[str, List[int]] = field(default_factory=dict)
    daemon: Dict[str, List[int]] = field(default_factory=dict)
    per_pod: Dict[str, List[int]] = field(default_factory=dict)


class Side(abc.ABC):
    """One runtime under test. ``setup`` before anything, ``teardown`` always (it removes everything)."""

    name: str = ""
    #: milliseconds spent in each step of the last :meth:`start_pod` (e.g. shim start, task Create)
    last_steps: Dict[str, float] = {}

    @abc.abstractmethod
    async def setup(self) -> None:
        """Start daemons and prepare images."""

    @abc.abstractmethod
    async def teardown(self) -> None:
        """Remove every pod, stop every process started, remove mounts and cgroups."""

    @abc.abstractmethod
    async def start_pod(self) -> Any:
        """Start one pod running one ``sleep`` container; returns a handle for :meth:`remove_pods`."""

    @abc.abstractmethod
    async def remove_pods(self, pods: Sequence[Any]) -> None:
        """Stop and remove pods (and wait until their processes are gone)."""

    @abc.abstractmethod
    def groups(self) -> Groups:
        """The processes that make up the management plane, the daemon and per-pod infrastructure now."""

    async def settle(self) -> None:
        """Before each measured start and batch: wait until what the side keeps ready for starts is ready
        (the vmm pool's warm VMs), so that every start meets the side in the same state."""

    def take_transient_cpu(self) -> procstats.CpuTimes:
        """CPU of short-lived management processes that exited since the last call (shim ``start``)."""
        return procstats.CpuTimes()

    def versions(self) -> Dict[str, str]:
        return {}

    def diagnostics(self) -> str:
        """The tail of the side's daemon log, shown when the side fails."""
        return ""

    async def after_measure(self, result: Dict[str, Any]) -> None:
        """Phases and derived numbers of this side only, added to ``result`` after the common phases."""


def _all(pids: Dict[str, List[int]]) -> List[int]:
    return [pid for group in pids.values() for pid in group]


async def _timed_start(side: Side) -> tuple[Any, float]:
    t0 = time.perf_counter()
    pod = await side.start_pod()
    return pod, (time.perf_counter() - t0) * 1000


async def _serial(side: Side, n: int) -> Dict[str, Any]:
    latencies: List[float] = []
    steps: Dict[str, List[float]] = {}
    cpu_mgmt, cpu_daemon = procstats.CpuTimes(), procstats.CpuTimes()
    pods: List[Any] = []
    for _ in range(n):
        await side.settle()
        before = side.groups()
        side.take_transient_cpu()
        mgmt0, daemon0 = procstats.cpu_times(_all(before.management)), procstats.cpu_times(_all(before.daemon))
        pod, ms = await _timed_start(side)
        after = side.groups()
        # a process that did not exist before the start (a new shim) is counted from zero
        mgmt1 = procstats.cpu_times(_all(after.management)) + side.take_transient_cpu()
        cpu_mgmt = cpu_mgmt + (mgmt1 - mgmt0)
        cpu_daemon = cpu_daemon + (procstats.cpu_times(_all(after.daemon)) - daemon0)
        latencies.append(ms)
        for step, step_ms in side.last_steps.items():
            steps.setdefault(step, []).append(step_ms)
        pods.append(pod)
        if len(pods) >= _SERIAL_BATCH:
            await side.remove_pods(pods)
            pods = []
    await side.remove_pods(pods)
    return {"latency_ms": procstats.latency_summary(latencies), "samples_ms": latencies,
            "steps_p50_ms": {step: procstats.percentile(v, 50) for step, v in steps.items()}, "steps_ms": steps,
            "cpu_per_start_ms": {"management": cpu_mgmt.own * 1000 / n,
                                 "management_children": cpu_mgmt.children * 1000 / n,
                                 "daemon": cpu_daemon.own * 1000 / n}}


async def parallel_batch(side: Side, n: int) -> Dict[str, Any]:
    """``n`` starts at once: completion time of the batch and each start's latency; the pods are removed.

    :raise RuntimeError: when any start failed (after removing the pods that did start).
    """
    await side.settle()
    t0 = time.perf_counter()
    results = await asyncio.gather(*(_timed_start(side) for _ in range(n)), return_exceptions=True)
    wall = (time.perf_counter() - t0) * 1000
    pods = [r[0] for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await side.remove_pods(pods)
    if errors:
        raise RuntimeError(f"{side.name}: {len(errors)} of {n} parallel starts failed, first: {errors[0]}")
    latencies = [r[1] for r in results if not isinstance(r, BaseException)]
    return {"n": n, "completion_ms": wall, "latency_ms": procstats.latency_summary(latencies),
            "samples_ms": latencies}


def _group_memory(groups: Dict[str, List[int]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    total = procstats.Memory()
    for name, pids in groups.items():
        mem = procstats.memory_sum(pids)
        out[name] = {**mem.as_dict(), "processes": len(pids)}
        total = total + mem
    out["total"] = {**total.as_dict(), "processes": sum(len(p) for p in groups.values())}
    return out


async def _memory(side: Side, targets: Sequence[int]) -> List[Dict[str, Any]]:
    rows = []
    pods: List[Any] = []
    try:
        for target in sorted(targets):
            while len(pods) < target:
                pods.append(await side.start_pod())
            await asyncio.sleep(_SETTLE_S)
            groups = side.groups()
            rows.append({"pods": target, "management": _group_memory(groups.management),
                         "daemon": _group_memory(groups.daemon), "per_pod": _group_memory(groups.per_pod)})
            log.info("%s: %d pods, management PSS %.1f MiB", side.name, target,
                     rows[-1]["management"]["total"]["pss_kb"] / 1024)
    finally:
        await side.remove_pods(pods)
    return rows


async def measure(side: Side, plan: Plan) -> Dict[str, Any]:
    """Run every phase of ``plan`` on an already set-up ``side``; returns the JSON-ready results."""
    result: Dict[str, Any] = {"side": side.name, "versions": side.versions()}
    warm = [await side.start_pod() for _ in range(plan.warmup)]
    await side.remove_pods(warm)
    procstats.reap_zombie_children()
    if plan.serial:
        log.info("%s: %d serial starts", side.name, plan.serial)
        result["serial"] = await _serial(side, plan.serial)
        procstats.reap_zombie_children()
    result["parallel"] = []
    for n in plan.parallel:
        log.info("%s: %d parallel starts", side.name, n)
        result["parallel"].append(await parallel_batch(side, n))
        procstats.reap_zombie_children()
    if plan.pods:
        result["memory"] = await _memory(side, plan.pods)
        procstats.reap_zombie_children()
    await side.after_measure(result)
    return result
