"""daemon.signals: SIGTERM/SIGINT -> shutdown event, SIGHUP -> reload callback."""
from __future__ import annotations

import asyncio
import os
import signal

import pytest

from kuasar_shared.daemon.signals import Signals


@pytest.mark.asyncio
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_shutdown_signal_sets_event_once(sig: int) -> None:
    seen: list[int] = []
    sigs = Signals(on_shutdown=seen.append)
    sigs.install()
    try:
        os.kill(os.getpid(), sig)
        await asyncio.wait_for(sigs.shutdown_event.wait(), 5)
        assert sigs.received == sig
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.sleep(0.05)
        assert seen == [sig]
    finally:
        await sigs.close()


@pytest.mark.asyncio
async def test_sighup_runs_async_reload_and_close_cancels_it() -> None:
    started = asyncio.Event()
    cancelled = []

    async def reload() -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    sigs = Signals(on_reload=reload)
    sigs.install()
    os.kill(os.getpid(), signal.SIGHUP)
    await asyncio.wait_for(started.wait(), 5)
    os.kill(os.getpid(), signal.SIGHUP)  # ignored while the first reload runs
    await asyncio.sleep(0.05)
    await sigs.close()
    assert cancelled == [True]
    assert not sigs.shutdown_event.is_set()


@pytest.mark.asyncio
async def test_sync_reload_and_failures_are_logged(caplog) -> None:
    calls = []

    def reload() -> None:
        calls.append(1)
        raise RuntimeError("bad config")

    sigs = Signals(on_reload=reload)
    sigs.install()
    try:
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            await asyncio.sleep(0.01)
            if calls:
                break
        assert calls == [1]
        assert "reload failed" in caplog.text
    finally:
        await sigs.close()


@pytest.mark.asyncio
async def test_request_shutdown_without_signal() -> None:
    sigs = Signals()
    sigs.request_shutdown()
    assert sigs.shutdown_event.is_set() and sigs.received is None
