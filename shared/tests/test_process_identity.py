"""Process identity and exit watching for re-adopted processes."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from kuasar_shared import process
from kuasar_shared.process_identity import ExitWatch, is_same_process, kill, start_time, wait_exit


@pytest.mark.asyncio
async def test_start_time_identifies_a_live_process() -> None:
    child = process.spawn(["sleep", "30"])
    try:
        started = start_time(child.pid)
        assert started is not None
        assert is_same_process(child.pid, started)
        assert not is_same_process(child.pid, started + 1)
        assert not is_same_process(child.pid, None)
    finally:
        child.kill()
        await child.wait()
    assert start_time(child.pid) is None
    assert not kill(child.pid)


@pytest.mark.asyncio
async def test_exit_watch_fires_once_and_cancel_stops_it() -> None:
    child = process.spawn(["sleep", "30"])
    fired: list[int] = []
    watch = ExitWatch(child.pid, lambda: fired.append(1))
    other = ExitWatch(child.pid, lambda: fired.append(2))
    other.cancel()
    assert kill(child.pid, signal.SIGTERM)
    await child.wait()
    await asyncio.wait_for(wait_exit(child.pid), 5)
    await asyncio.sleep(0.05)
    assert fired == [1]
    watch.cancel()


@pytest.mark.asyncio
async def test_wait_exit_of_a_missing_pid_returns() -> None:
    await asyncio.wait_for(wait_exit(2 ** 22 + 1), 2)
    assert start_time(os.getpid()) is not None
