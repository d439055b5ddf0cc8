"""Daemons the benchmark starts itself (containerd, sandboxers): stopping them and reading their logs."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from typing import IO, Any, Optional

import procstats

__all__ = ["terminate", "log_tail", "kill_below", "unmount_below"]


async def terminate(proc: "subprocess.Popen[Any]", timeout: float = 20.0) -> None:
    """SIGTERM a process this run started, SIGKILL it after ``timeout`` s, and reap it."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        await asyncio.to_thread(proc.wait, timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        await asyncio.to_thread(proc.wait)


def log_tail(handle: Optional[IO[bytes]], limit: int) -> str:
    """The last ``limit`` bytes of a daemon's open log file ('' before it has one)."""
    if handle is None:
        return ""
    handle.flush()
    with open(handle.name, "rb") as reader:
        return reader.read()[-limit:].decode(errors="replace")


async def kill_below(directory: str) -> None:
    """SIGKILL every process whose command line names this run's own ``directory`` (QEMU, a relay or a
    runsc sandbox that outlived a sandboxer that died or a pod whose start failed half-way), and wait until
    each is gone or a zombie."""
    mine = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()
            and any(directory in a for a in procstats.cmdline(int(p)))]
    for pid in mine:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for _ in range(100):
        procstats.reap_zombie_children()
        if all(procstats.is_zombie(pid) for pid in mine):
            return
        await asyncio.sleep(0.05)


def unmount_below(directory: str) -> None:
    """Lazily unmount every mount below ``directory`` (itself included), deepest first: ``umount -R`` would
    miss them when ``directory`` is not itself a mount point."""
    with open("/proc/self/mountinfo") as handle:
        mounts = [line.split()[4] for line in handle]
    for mount in sorted((m for m in mounts if m == directory or m.startswith(directory.rstrip("/") + "/")),
                        reverse=True):
        subprocess.run(["umount", "-l", mount], stderr=subprocess.DEVNULL, check=False)
