"""runner_control.py and the fork-server entry: requests to the fork-server wait while its socket buffer is
full; a dead fork-server is replaced by the next take (real fork-server, no module run); its command line."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys

from kuasar_shared.process_identity import wait_exit

from kuasar_wasm_sandboxer.cache import ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.forkserver import executable, wasmtime_library
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
    """The task server never loads wasmtime's Python package (the native fork-server opens its C library)."""
    script = "import sys, kuasar_wasm_sandboxer.task; print('wasmtime' in sys.modules)"
    task = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert task.stdout.split() == ["False"]


def test_fork_server_command_line_errors_name_the_usage() -> None:
    library = wasmtime_library()
    for argv in (["--control"], ["--control", "x", "--wasmtime", library], ["--control", "3"],
                 ["--cache-dir", "/c", "--wasmtime", library]):
        run = subprocess.run([executable(), *argv], capture_output=True, text=True)
        assert run.returncode == 2 and "usage: wasm-forkserver --control FD --wasmtime LIBRARY" in run.stderr
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        run = subprocess.run([executable(), "--control", str(theirs.fileno()), "--wasmtime", "/nonexistent.so"],
                             capture_output=True, text=True, pass_fds=[theirs.fileno()])
    assert run.returncode == 1 and "cannot load the wasmtime library: /nonexistent.so" in run.stderr
