"""Helpers for tests that run real containers: a static-busybox rootfs, FIFOs and reading them.

The test suites of every package that drives a real OCI runtime (runc, runsc) or reads a
container's FIFO output use these, so that each keeps only its own fixtures. pytest is imported only
to skip a test that cannot run here.
"""
from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from kuasar_shared.daemon.reaper import set_child_subreaper

if TYPE_CHECKING:
    import pytest

__all__ = ["BUSYBOX", "make_busybox_rootfs", "busybox_rootfs_for", "fifo_factory", "read_fifo"]

BUSYBOX = shutil.which("busybox") or "/bin/busybox"


def make_busybox_rootfs(rootfs: str) -> None:
    """A minimal rootfs: static busybox plus one symlink per applet."""
    for sub in ("bin", "proc", "sys", "dev", "tmp", "etc", "work"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))


def busybox_rootfs_for(tmp_path_factory: pytest.TempPathFactory, runtime: Optional[str], runtime_name: str,
                       subreaper: bool = False) -> str:
    """A new busybox rootfs for tests of the runtime binary ``runtime`` (None: not installed).

    Skips the test unless it runs as root with ``runtime_name`` and busybox-static installed.
    ``subreaper``: make the test process a child subreaper, so that the processes the runtime
    starts re-parent to it as they do to a task server.
    """
    if runtime is None or not os.path.exists(BUSYBOX) or os.geteuid() != 0:
        import pytest

        pytest.skip(f"needs root, {runtime_name} and busybox-static")
    if subreaper:
        set_child_subreaper()
    rootfs = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    make_busybox_rootfs(rootfs)
    return rootfs


def fifo_factory(directory: Path) -> Callable[[str], str]:
    """``factory(name) -> path`` of a new FIFO in ``directory`` (a test's ``fifo`` fixture)."""
    def factory(name: str) -> str:
        path = str(directory / name)
        os.mkfifo(path)
        return path
    return factory


async def read_fifo(path: str, timeout: float = 20.0) -> bytes:
    """Read a FIFO to EOF without blocking the loop."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    done = loop.create_future()

    def readable() -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        if data:
            chunks.append(data)
        elif not done.done():
            done.set_result(None)
    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    return b"".join(chunks)
