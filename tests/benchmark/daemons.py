"""Daemons the benchmark starts itself (containerd, sandboxers): stopping them and reading their logs."""
from __future__ import annotations

import asyncio
import signal
import subprocess
from typing import IO, Any, Optional

__all__ = ["terminate", "log_tail"]


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
