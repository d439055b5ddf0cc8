"""What the benchmark reads from /proc: memory (smaps_rollup), CPU times, process trees, percentiles.

Both sides of the comparison are measured by the same functions so that a difference in the
numbers is a difference in the runtimes, never in the bookkeeping.
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence

__all__ = ["Memory", "CpuTimes", "smaps", "cpu_times", "children_map", "descendants", "cmdline", "comm",
           "is_zombie", "percentile", "latency_summary", "memory_sum", "reap_zombie_children"]

_CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """Resident and proportional set size of one process (or a sum), in KiB."""

    rss_kb: int = 0
    pss_kb: int = 0

    def __add__(self, other: "Memory") -> "Memory":
        return Memory(self.rss_kb + other.rss_kb, self.pss_kb + other.pss_kb)

    def as_dict(self) -> Dict[str, int]:
        return {"rss_kb": self.rss_kb, "pss_kb": self.pss_kb}


@dataclass(frozen=True)
class CpuTimes:
    """utime+stime of a process (``own``) and of its reaped children (``children``), in seconds."""

    own: float = 0.0
    children: float = 0.0

    def __add__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(self.own + other.own, self.children + other.children)

    def __sub__(self, other: "CpuTimes") -> "CpuTimes":
        return CpuTimes(self.own - other.own, self.children - other.children)


def smaps(pid: int) -> Memory:
    """``Rss`` and ``Pss`` from /proc/<pid>/smaps_rollup; a process that is gone counts as zero."""
    values = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in ("Rss:", "Pss:"):
                    values[parts[0]] = int(parts[1])
    except (FileNotFoundError, ProcessLookupError):
        return Memory()
    return Memory(values.get("Rss:", 0), values.get("Pss:", 0))


def memory_sum(pids: Iterable[int]) -> Memory:
    total = Memory()
    for pid in pids:
        total = total + smaps(pid)
    return total


def _stat_fields(pid: int) -> Optional[List[str]]:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None


def cpu_times(pids: Iterable[int]) -> CpuTimes:
    """Summed CPU times of ``pids`` (fields utime, stime, cutime, cstime of /proc/<pid>/stat)."""
    total = CpuTimes()
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
        total = total + CpuTimes((utime + stime) / _CLK_TCK, (cutime + cstime) / _CLK_TCK)
    return total


def is_zombie(pid: int) -> bool:
    """True when ``pid`` has exited (zombie or gone)."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] in ("Z", "X")


def cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except (FileNotFoundError, ProcessLookupError):
        return []


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def children_map() -> Dict[int, List[int]]:
    """parent pid -> child pids, for every live process."""
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(root: int, tree: Dict[int, List[int]]) -> List[int]:
    found, todo = [], list(tree.get(root, ()))
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, ()))
    return found


def reap_zombie_children() -> int:
    """Reap our exited children (orphans re-parented to us as child subreaper); returns how many.

    Only zombies are waited for, by pid, so a child some other code still waits for is never stolen
    while it runs.
    """
    reaped = 0
    for pid in children_map().get(os.getpid(), ()):
        fields = _stat_fields(pid)
        if fields is not None and fields[0] == "Z":
            try:
                os.waitpid(pid, os.WNOHANG)
                reaped += 1
            except ChildProcessError:
                pass
    return reaped


def percentile(values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (``p`` in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latency_summary(ms: Sequence[float]) -> Dict[str, float]:
    """n, min, p50, p90, p99, max and mean of latencies in milliseconds."""
    return {"n": len(ms), "min": min(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90),
            "p99": percentile(ms, 99), "max": max(ms), "mean": statistics.fmean(ms)}
