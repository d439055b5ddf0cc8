"""kuasar-ctl vm-shell's client (run_shell) against the guest's real DebugConsole served on a unix socket,
driven through a real pty standing in for the user's terminal."""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import signal
import struct
import termios

import pytest

from kuasar_shared import errors
from kuasar_shared.ttrpc import Server
from kuasar_vmm_sandboxer.ctl import CONSOLE_SERVICE, run_shell
from kuasar_vmm_task.boot import ENV
from kuasar_vmm_task.console import DebugConsole


@pytest.fixture
async def console_socket(tmp_path):
    path = str(tmp_path / "task.sock")
    server = Server([DebugConsole("/bin/sh", ENV).service()])
    await server.listen_unix(path)
    yield path
    await server.shutdown()


async def _read_pty(fd: int, until: bytes, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    got = b""
    deadline = loop.time() + timeout
    while until not in got:
        assert loop.time() < deadline, "terminal shows %r" % got
        try:
            got += os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.02)
        except OSError as err:
            if err.errno != errno.EIO:
                raise
            break
    return got


async def test_run_shell_on_a_terminal_is_raw_sized_and_restored(console_socket):
    user, terminal = os.openpty()  # user: what a person types into / sees; terminal: kuasar-ctl's stdio
    os.set_blocking(user, False)
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 90, 0, 0))
    before = termios.tcgetattr(terminal)
    try:
        shell = asyncio.ensure_future(run_shell(console_socket, terminal, terminal))
        os.write(user, b"stty size; echo $((6*7))\r")
        out = await _read_pty(user, b"42\r\n")
        assert b"30 90\r\n42\r\n" in out
        assert not termios.tcgetattr(terminal)[3] & termios.ECHO  # raw while the shell runs
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 120, 0, 0))
        os.kill(os.getpid(), signal.SIGWINCH)
        await asyncio.sleep(0.2)
        os.write(user, b"stty size\r")
        assert b"44 120\r\n" in await _read_pty(user, b"44 120")
        os.write(user, b"exit 3\r")
        assert await asyncio.wait_for(shell, 10) == 3
        assert termios.tcgetattr(terminal) == before
    finally:
        os.close(user)
        os.close(terminal)


async def test_run_shell_without_a_terminal_reads_input_to_its_end(console_socket, tmp_path):
    script = tmp_path / "in.txt"
    script.write_text("echo from a file\nexit 9\n")
    out = tmp_path / "out.txt"
    with open(script, "rb") as stdin, open(out, "wb") as stdout:
        assert await run_shell(console_socket, stdin.fileno(), stdout.fileno()) == 9
    assert b"from a file" in out.read_bytes()
    with open(os.devnull, "rb") as stdin, open(out, "wb") as stdout:
        assert await run_shell(console_socket, stdin.fileno(), stdout.fileno()) == 0


async def test_run_shell_against_a_guest_without_console(tmp_path):
    path = str(tmp_path / "task.sock")
    server = Server([])
    await server.listen_unix(path)
    try:
        with open(os.devnull, "rb") as stdin, open(os.devnull, "wb") as stdout:
            with pytest.raises(errors.Unimplemented, match=CONSOLE_SERVICE):
                await run_shell(path, stdin.fileno(), stdout.fileno())
    finally:
        await server.shutdown()
