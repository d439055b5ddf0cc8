"""Where our management plane spends its CPU during pod starts: py-spy samples of the sandboxer and
the task server while N pods start one after another.

py-spy attaches from outside (``--nonblocking``: the targets are never paused), so the numbers
come from the real daemons under the real workload. The raw collapsed stacks are kept next to
the results; the JSON gets the top functions by own ("self") and inclusive samples.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections import Counter
from typing import Any, Dict, List, Optional

from kuasar import KuasarSide, tool

__all__ = ["profile_starts", "summarize_collapsed"]

_TOP = 15
_RATE = 200
_LOCATION = re.compile(r" \(([^()]*)\)$")


def _frame_name(frame: str) -> str:
    """``func (/long/path/src/pkg/mod.py:12)`` -> ``func (pkg/mod.py)``."""
    match = _LOCATION.search(frame)
    if not match:
        return frame
    where = "/".join(match.group(1).rsplit(":", 1)[0].split("/")[-2:])
    return f"{frame[:match.start()]} ({where})"


def summarize_collapsed(text: str, top: int = _TOP) -> Dict[str, Any]:
    """Top functions by self and inclusive samples from py-spy's raw (collapsed-stack) output."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if frames:
            own[frames[-1]] += n
        for name in set(frames):
            inclusive[name] += n

    def rows(counter: Counter) -> List[Dict[str, Any]]:
        return [{"function": name, "samples": n, "percent": round(100.0 * n / total, 1)}
                for name, n in counter.most_common(top)]

    return {"samples": total, "self": rows(own), "inclusive": rows(inclusive)}


async def profile_starts(side: KuasarSide, n: int, out_dir: str) -> Dict[str, Any]:
    """Start ``n`` pods serially under py-spy; returns per-process summaries (empty without py-spy).

    The pods are removed afterwards; the raw stacks go to ``<out_dir>/profile-<process>.txt``.
    """
    spy = tool("py-spy")
    if spy is None or n <= 0:
        return {}
    targets = {name: pids[0] for name, pids in side.groups().management.items() if pids and name != "sandbox-parent"}
    recorders: Dict[str, subprocess.Popen] = {}
    outputs: Dict[str, str] = {}
    for name, pid in targets.items():
        outputs[name] = os.path.join(out_dir, f"profile-{name}.txt")
        recorders[name] = subprocess.Popen([spy, "record", "--nonblocking", "--format", "raw", "-r", str(_RATE),
                                            "-p", str(pid), "-o", outputs[name]],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    await asyncio.sleep(1.0)
    pods = []
    started = time.perf_counter()
    try:
        for _ in range(n):
            pods.append(await side.start_pod())
    finally:
        wall = time.perf_counter() - started
        for proc in recorders.values():
            proc.send_signal(signal.SIGINT)
        for proc in recorders.values():
            await asyncio.to_thread(proc.wait, 30)
        await side.remove_pods(pods)
    result: Dict[str, Any] = {"pods": n, "wall_s": round(wall, 2), "rate_hz": _RATE, "processes": {}}
    for name, path in outputs.items():
        text: Optional[str] = None
        if os.path.exists(path):
            with open(path) as f:
                text = f.read()
        if text:
            summary = summarize_collapsed(text)
            # samples of non-idle threads: CPU plus blocking syscalls such as fsync
            summary["cpu_s_per_pod"] = round(summary["samples"] / _RATE / n, 4)
            summary["raw"] = os.path.basename(path)
            result["processes"][name] = summary
    return result
