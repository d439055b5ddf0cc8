"""daemon.notify: sd_notify datagrams to $NOTIFY_SOCKET (path or abstract), watchdog pings."""
from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from kuasar_shared.daemon.notify import Notifier


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


def test_ready_status_stopping(listener) -> None:
    path, sock = listener
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("serving 0 pods")
    assert sock.recv(4096).decode().split("\n") == ["READY=1", "MAINPID=%d" % os.getpid(), "STATUS=serving 0 pods"]
    assert n.status("busy") and sock.recv(4096) == b"STATUS=busy"
    assert n.stopping() and sock.recv(4096) == b"STOPPING=1"
    assert n.watchdog() and sock.recv(4096) == b"WATCHDOG=1"


def test_abstract_socket_name() -> None:
    name = "kuasar-test-%s" % uuid.uuid4().hex
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        assert Notifier("@" + name).ready()
        assert sock.recv(4096).startswith(b"READY=1")
    finally:
        sock.close()


def test_disabled_without_socket_and_failure_is_not_fatal(tmp_path) -> None:
    n = Notifier.from_env({})
    assert not n.enabled and not n.ready() and n.watchdog_interval is None
    assert not Notifier(str(tmp_path / "absent.sock")).ready()


def test_watchdog_env_parsing() -> None:
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                              "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 0.0005
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000",
                              "WATCHDOG_PID": "1"}).watchdog_interval is None
    assert Notifier.from_env({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "soon"}).watchdog_interval is None
    assert Notifier.from_env({"WATCHDOG_USEC": "1000"}).watchdog_interval is None


@pytest.mark.asyncio
async def test_watchdog_task_pings_until_cancelled(listener) -> None:
    path, sock = listener
    sock.setblocking(False)
    n = Notifier(path, watchdog_usec=40_000)
    task = asyncio.ensure_future(n.run_watchdog())
    await asyncio.sleep(0.13)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pings = []
    while True:
        try:
            pings.append(sock.recv(100))
        except BlockingIOError:
            break
    assert 4 <= len(pings) <= 9 and set(pings) == {b"WATCHDOG=1"}


@pytest.mark.asyncio
async def test_watchdog_without_interval_returns() -> None:
    await asyncio.wait_for(Notifier(None).run_watchdog(), 1)
