"""daemon.reaper: one waitpid(-1) loop, exits dispatched by pid, unclaimed exits retained."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone

import pytest

from kuasar_shared.daemon.reaper import ExitEvent, Reaper, get_reaper, is_child_subreaper, set_child_subreaper


def _fork_exit(code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    return pid


def _fork_signal(sig: int) -> int:
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), sig)
        os._exit(99)
    return pid


@pytest.mark.asyncio
async def test_subscribe_receives_exit_code_and_time() -> None:
    reaper = Reaper()
    reaper.install()
    try:
        before = datetime.now(timezone.utc)
        pid = _fork_exit(7)
        event = await asyncio.wait_for(reaper.subscribe(pid), 5)
        assert event.pid == pid and event.status == 7
        assert before <= event.exited_at <= datetime.now(timezone.utc)
        assert event.exited_at.tzinfo is timezone.utc
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
async def test_signal_death_is_128_plus_signal() -> None:
    reaper = Reaper()
    reaper.install()
    try:
        pid = _fork_signal(signal.SIGKILL)
        assert (await asyncio.wait_for(reaper.subscribe(pid), 5)).status == 137
        pid = _fork_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(reaper.subscribe(pid), 5)).status == 143
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
async def test_unclaimed_exit_is_retained_then_claimed_once() -> None:
    reaper = Reaper()
    reaper.install()
    try:
        pid = _fork_exit(3)
        for _ in range(200):
            if reaper.peek(pid):
                break
            await asyncio.sleep(0.01)
        assert reaper.peek(pid) == ExitEvent(pid, 3, reaper.peek(pid).exited_at)
        fut = reaper.subscribe(pid)
        assert fut.done() and fut.result().status == 3
        assert reaper.peek(pid) is None
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
async def test_several_subscribers_and_listeners_all_see_the_exit() -> None:
    reaper = Reaper()
    seen: list[ExitEvent] = []
    reaper.add_listener(seen.append)
    reaper.install()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            os._exit(5)
        a, b = reaper.subscribe(pid), reaper.subscribe(pid)
        os.write(w, b"x")
        os.close(r)
        os.close(w)
        ea, eb = await asyncio.wait_for(asyncio.gather(a, b), 5)
        assert ea is eb and ea.status == 5
        assert [e.pid for e in seen] == [pid]
        reaper.remove_listener(seen.append)
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
async def test_cancelled_subscription_is_dropped_and_exit_retained() -> None:
    reaper = Reaper()
    reaper.install()
    try:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(r, 1)
            os._exit(0)
        fut = reaper.subscribe(pid)
        fut.cancel()
        await asyncio.sleep(0)
        assert "waiting=0" in repr(reaper)
        os.write(w, b"x")
        os.close(r)
        os.close(w)
        for _ in range(200):
            if reaper.peek(pid):
                break
            await asyncio.sleep(0.01)
        assert reaper.forget(pid).status == 0
        assert reaper.forget(pid) is None
    finally:
        reaper.uninstall()


@pytest.mark.asyncio
async def test_retained_exits_are_bounded() -> None:
    reaper = Reaper()
    reaper.retain_limit = 2
    reaper.install()
    try:
        pids = [_fork_exit(i) for i in range(4)]
        for _ in range(300):
            await asyncio.sleep(0.01)
            reaper.reap()
            if all(_gone(p) for p in pids):
                break
        kept = [p for p in pids if reaper.peek(p)]
        assert len(kept) == 2
    finally:
        reaper.uninstall()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.asyncio
async def test_install_reaps_children_that_died_before() -> None:
    pid = _fork_exit(4)
    time.sleep(0.1)  # the child is a zombie now, no handler has run
    reaper = Reaper()
    reaper.install()
    try:
        assert reaper.peek(pid).status == 4
    finally:
        reaper.uninstall()


def test_reinstall_in_a_new_loop() -> None:
    reaper = get_reaper()

    async def one(code: int) -> int:
        reaper.install()
        return (await asyncio.wait_for(reaper.subscribe(_fork_exit(code)), 5)).status

    assert asyncio.run(one(1)) == 1
    assert not reaper.installed
    assert asyncio.run(one(2)) == 2


def test_reparented_orphan_is_reaped_by_subreaper() -> None:
    """A grandchild orphaned by its parent comes to us (child subreaper) and is reaped."""
    script = r"""
import asyncio, os, sys
from kuasar_shared.daemon.reaper import get_reaper, set_child_subreaper, is_child_subreaper
set_child_subreaper()
assert is_child_subreaper()
async def run():
    reaper = get_reaper()
    reaper.install()
    r, w = os.pipe()
    rp, wp = os.pipe()
    mid = os.fork()
    if mid == 0:
        grand = os.fork()
        if grand == 0:
            os.read(r, 1)
            os._exit(42)
        os.write(wp, str(grand).encode())
        os._exit(0)
    assert (await reaper.subscribe(mid)).status == 0
    grand = int(os.read(rp, 32))
    fut = reaper.subscribe(grand)
    os.write(w, b"x")
    ev = await asyncio.wait_for(fut, 5)
    print("grandchild", ev.status)
asyncio.run(run())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "grandchild 42"


def test_subreaper_flag_roundtrip_in_child() -> None:
    pid = os.fork()
    if pid == 0:
        try:
            set_child_subreaper(True)
            ok = is_child_subreaper()
            set_child_subreaper(False)
            os._exit(0 if ok and not is_child_subreaper() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_handler_is_removed_before_the_loop_closes() -> None:
    reaper = Reaper()
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(asyncio.sleep(0))
        reaper.install(loop)
        assert reaper.installed
        assert signal.getsignal(signal.SIGCHLD) not in (signal.SIG_DFL, None)
    finally:
        loop.close()
    assert not reaper.installed
    assert signal.getsignal(signal.SIGCHLD) == signal.SIG_DFL


@pytest.mark.asyncio
async def test_listeners_see_an_exit_before_it_is_reaped() -> None:
    """A listener that records the exit durably runs while the child is still a zombie: a daemon killed
    between the two leaves the zombie to its subreaper instead of losing the status."""
    reaper = Reaper()
    states: list[str] = []

    def listener(event: ExitEvent) -> None:
        with open(f"/proc/{event.pid}/stat") as f:
            states.append(f.read().rsplit(")", 1)[1].split()[0])
    reaper.add_listener(listener)
    reaper.install()
    try:
        pid = _fork_exit(3)
        event = await asyncio.wait_for(reaper.subscribe(pid), 5)
        assert event.status == 3 and states == ["Z"]
        assert not os.path.exists(f"/proc/{pid}")  # reaped right after the listeners ran
    finally:
        reaper.uninstall()
