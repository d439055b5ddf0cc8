"""runner_control.py and the fork-server entry: requests to the fork-server wait while its socket buffer is
full; a dead fork-server is replaced by the next take (real fork-server, no module run); the wire format."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

import pytest

from kuasar_shared.process_identity import wait_exit

from kuasar_wasm_sandboxer.cache import ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.forkserver import parse_args
from kuasar_wasm_sandboxer.protocol import decode, encode
from kuasar_wasm_sandboxer.runner_control import ForkServer, _send_fd


async def test_send_waits_while_the_buffer_is_full() -> None:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    carried = os.open(os.devnull, os.O_RDONLY)
    try:
        ours.setblocking(False)
        queued = 0
        while True:  # a burst of requests the fork-server has not read yet
            try:
                socket.send_fds(ours, [b"fill"], [carried])
            except BlockingIOError:
                break
            queued += 1
        sending = asyncio.ensure_future(_send_fd(ours, b"last", carried))
        await asyncio.sleep(0)
        assert not sending.done()
        for _ in range(queued):
            message, fds, _flags, _addr = socket.recv_fds(theirs, 16, 1)
            assert message == b"fill"
            for fd in fds:
                os.close(fd)
        await asyncio.wait_for(sending, 10)
        message, fds, _flags, _addr = socket.recv_fds(theirs, 16, 1)
        assert message == b"last" and len(fds) == 1
        os.close(fds[0])
    finally:
        os.close(carried)
        ours.close()
        theirs.close()


async def test_take_replaces_a_dead_fork_server(tmp_path) -> None:
    forkserver = ForkServer(ModuleCache(str(tmp_path / "cache"), engine_fingerprint(), 1 << 20))
    forkserver.start()
    try:
        first = await forkserver.take()
        old = forkserver.pid
        assert old is not None
        # engine and WASI linker built, and still one thread: forks are safe
        assert os.listdir(f"/proc/{old}/task") == [str(old)]
        os.kill(old, signal.SIGKILL)
        await wait_exit(old)
        second = await forkserver.take()  # the supervisor or take itself starts a new fork-server
        assert forkserver.pid not in (None, old) and second.pid != first.pid
        for runner in (first, second):
            await runner.abandon()
            await wait_exit(runner.pid)
    finally:
        await forkserver.close()


def test_imports_stay_lean() -> None:
    """Neither the task server nor the fork-server loads wasmtime's Python package (the fork-server opens
    its C library natively); the fork-server's Python is nothing but the ctypes call into the native loop."""
    script = ("import sys, kuasar_wasm_sandboxer.{}; "
              "print(' '.join(m for m in ('wasmtime', 'dataclasses', 'logging', 'threading', 'asyncio') "
              "if m in sys.modules))")
    task = subprocess.run([sys.executable, "-c", script.format("task")], capture_output=True, text=True, check=True)
    assert "wasmtime" not in task.stdout.split()
    fork = subprocess.run([sys.executable, "-c", script.format("forkserver")], capture_output=True, text=True,
                          check=True)
    assert fork.stdout.split() == []


def test_fields_round_trip_and_refuse_garbage() -> None:
    fields = [("ready", "1"), ("warning", "a=b\nc"), ("warning", "")]
    assert encode(fields) == b"ready=1\0warning=a=b\nc\0warning=\0"
    assert decode(encode(fields)) == fields
    for data, message in ((b"", "empty"), (b"a=1", "not ended by a NUL"), (b"a=1\0junk\0", "field 2 .* name=value"),
                          (b"=x\0", "field 1"), (b"a=\xff\0", "not UTF-8")):
        with pytest.raises(ValueError, match=message):
            decode(data)
    for name, value in (("", "x"), ("a=b", "x"), ("a", "x\0y")):
        with pytest.raises(ValueError, match="names must be non-empty"):
            encode([(name, value)])


def test_fork_server_command_line_errors_name_the_option() -> None:
    assert parse_args(["--control", "3"]) == 3
    for argv, message in ((["--control"], "expected --control FD"), (["--cache-dir", "/c"], "expected --control FD"),
                          (["--control", "x"], "fd number")):
        with pytest.raises(ValueError, match=message):
            parse_args(argv)
    run = subprocess.run([sys.executable, "-m", "kuasar_wasm_sandboxer.forkserver", "--control", "x"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "kuasar-wasm-forkserver" in run.stderr
