"""The one task-server main (run_task_server): its command line, the Task API it serves over the backend a
type opens, and a clean stop on SIGTERM; run as a real process (the toy task server beside this file)."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import NotFound
from kuasar_shared.ttrpc import Client

TOY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_task_server.py")


async def _connect(path: str, proc: "subprocess.Popen[bytes]") -> Client:
    for _ in range(200):
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        if os.path.exists(path):
            return await Client.connect_unix(path)
        await asyncio.sleep(0.05)
    raise AssertionError(f"the task server never listened on {path}")


def test_arguments_are_the_daemons_plus_pods_dir() -> None:
    out = subprocess.run([sys.executable, TOY, "--help"], capture_output=True, text=True, check=True).stdout
    for option in ("--listen", "--dir", "--log-level", "--daemon", "--pods-dir"):
        assert option in out
    assert subprocess.run([sys.executable, TOY, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip() == "toy-task 0.0.1"


@pytest.mark.asyncio
async def test_serves_the_task_api_over_the_backend_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    listen = str(tmp_path / "task.sock")
    proc = subprocess.Popen([sys.executable, TOY, "--listen", listen, "--dir", str(tmp_path / "tasks"),
                             "--pods-dir", str(tmp_path)], stderr=subprocess.PIPE)
    try:
        client = await _connect(listen, proc)
        try:
            with pytest.raises(NotFound, match="c1"):
                await client.call("containerd.task.v3.Task", "State", shim_pb2.StateRequest(id="c1"),
                                  shim_pb2.StateResponse, timeout=5)
            with pytest.raises(NotFound, match="c1"):
                await client.call("containerd.task.v2.Task", "State", shim_pb2.StateRequest(id="c1"),
                                  shim_pb2.StateResponse, timeout=5)
        finally:
            await client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
