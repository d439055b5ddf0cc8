"""runner_control.py: requests to the fork-server wait while its socket buffer is full; a dead fork-server is
replaced by the next take (real fork-server, no module run)."""
from __future__ import annotations

import asyncio
import marshal
import os
import signal
import socket
import subprocess
import sys

import pytest

from kuasar_shared.process_identity import wait_exit

from kuasar_wasm_sandboxer.cache import ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.forkserver import parse_args
from kuasar_wasm_sandboxer.runner_control import ForkServer, _send_fd
from kuasar_wasm_sandboxer.runner_process import MAX_MESSAGE, decode, encode


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
        # warmed up (a module compiled in a child, the runner path walked) and still one thread: forks are safe
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
    """The task server never loads wasmtime; the fork-server, whose pages every runner shares, loads
    neither dataclasses, tempfile nor importlib.metadata (~8 MB between them), nor logging or threading
    (their at-fork hooks cost every runner ~0.4 MB)."""
    script = ("import sys, kuasar_wasm_sandboxer.{}; "
              "print(' '.join(m for m in ('wasmtime', 'dataclasses', 'tempfile', 'importlib.metadata', 'logging', "
              "'threading') if m in sys.modules))")
    task = subprocess.run([sys.executable, "-c", script.format("task")], capture_output=True, text=True, check=True)
    assert "wasmtime" not in task.stdout.split()
    fork = subprocess.run([sys.executable, "-c", script.format("forkserver")], capture_output=True, text=True,
                          check=True)
    assert fork.stdout.split() == ["wasmtime"]


def test_control_messages_round_trip_and_refuse_garbage() -> None:
    message = {"ready": True, "compiled": False, "load_ms": 1.5, "warnings": ["w"]}
    assert decode(encode(message)) == message
    with pytest.raises(ValueError, match="malformed"):
        decode(b"\xffjunk")
    with pytest.raises(ValueError, match="must be a dict"):
        decode(marshal.dumps([1]))
    with pytest.raises(ValueError, match="exceeds"):
        encode({"warnings": ["x" * MAX_MESSAGE]})


def test_fork_server_command_line_errors_name_the_option() -> None:
    assert parse_args(["--control", "3", "--cache-dir", "/c"]) == {"--control": "3", "--cache-dir": "/c"}
    for argv, message in ((["--control"], "pairs"), (["--control", "3", "--cache", "x"], "unknown options"),
                          (["--cache-dir", "/c"], "--control FD is required")):
        with pytest.raises(ValueError, match=message):
            parse_args(argv)
    run = subprocess.run([sys.executable, "-m", "kuasar_wasm_sandboxer.forkserver", "--control", "x"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "kuasar-wasm-forkserver" in run.stderr
