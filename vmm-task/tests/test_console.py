"""The debug console without a VM: the guest's DebugConsole served by a real ttrpc server (reached through a
host/guest mux pair, as in the VM) running /bin/sh on a real pseudo-terminal. kuasar-ctl's side (vm-shell)
is tested in vmm-sandboxer/tests/test_ctl_shell.py."""
from __future__ import annotations

import asyncio
import os
import re

import pytest
from google.protobuf import any_pb2

from kuasar_shared import errors
from kuasar_shared.testing.mux import mux_client
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.ttrpc import Server
from kuasar_vmm_task.boot import ENV
from kuasar_vmm_task.console import SERVICE, DebugConsole, pack
from kuasar_vmm_task.main import build_server
from kuasar_vmm_task.params import TaskParams


@pytest.fixture
async def console():
    """A ttrpc client whose connection reaches the DebugConsole through a mux pair, as in the VM."""
    server = Server([DebugConsole("/bin/sh", ENV).service()])
    async with mux_client(server) as client:
        yield client


class Session:
    """One Shell stream: type text, read the terminal until a marker, collect the exit status."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.output = b""
        self.status = None

    async def type(self, text: str) -> None:
        await self.stream.send(pack(transfer_pb2.Data(data=text.encode())))

    async def read_until(self, marker: bytes, timeout: float = 10.0) -> bytes:
        async def more() -> None:
            while marker not in self.output:
                raw = await self.stream.recv()
                assert raw is not None, "stream ended; output so far: %r" % self.output
                self._take(raw)
        await asyncio.wait_for(more(), timeout)
        return self.output

    def _take(self, raw: bytes) -> None:
        msg = any_pb2.Any.FromString(raw)
        if msg.Is(transfer_pb2.Data.DESCRIPTOR):
            data = transfer_pb2.Data()
            msg.Unpack(data)
            self.output += data.data
        else:
            done = shim_pb2.WaitResponse()
            assert msg.Unpack(done), msg.type_url
            self.status = done

    async def finish(self, timeout: float = 10.0) -> int:
        async def rest() -> None:
            while (raw := await self.stream.recv()) is not None:
                self._take(raw)
        await asyncio.wait_for(rest(), timeout)
        assert self.status is not None and self.status.exited_at.seconds > 0
        return self.status.exit_status


async def test_shell_runs_on_a_terminal_with_size_term_and_exit_status(console):
    s = Session(await console.stream(SERVICE, "Shell", metadata={"term": "xterm-test"}))
    await s.stream.send(pack(shim_pb2.ResizePtyRequest(width=101, height=37)))
    await s.type("echo $((6*7)); stty size; echo term=$TERM\n")
    out = await s.read_until(b"term=xterm-test\r\n")
    assert b"42\r\n37 101\r\n" in out  # the prompt may precede the output: typed text is echoed at once
    # the terminal is the shell's controlling tty: /dev/tty opens, and the shell leads the session
    await s.type("echo ctty > /dev/tty && echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$ E$((7*7))\n")
    out = await s.read_until(b" E49\r\n")
    sid, pid = re.search(rb"ctty\r\nsid=(\d+) pid=(\d+) E49", out).groups()
    assert sid == pid
    await s.type("exit 3\n")
    assert await s.finish() == 3


async def test_end_of_client_input_ends_the_shell(console):
    s = Session(await console.stream(SERVICE, "Shell"))
    await s.type("echo last line $((6*7))\n")
    await s.read_until(b"last line 42\r\n")
    await s.stream.close_send()
    assert await s.finish() == 0


async def test_output_written_just_before_exit_arrives(console):
    s = Session(await console.stream(SERVICE, "Shell"))
    await s.type("head -c 200000 /dev/zero | tr '\\0' x; echo END; exit 5\n")
    assert await s.finish(timeout=20) == 5
    assert s.output.count(b"x") >= 200000 and b"END\r\n" in s.output


async def test_client_going_away_hangs_the_shell_up(console, tmp_path):
    pidfile = tmp_path / "pid"
    s = Session(await console.stream(SERVICE, "Shell"))
    await s.type("echo $$ > %s; echo started$((6*7))\n" % pidfile)
    await s.read_until(b"started42\r\n")
    pid = int(pidfile.read_text())
    await console.close()

    async def gone() -> None:
        while True:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            await asyncio.sleep(0.05)
    await asyncio.wait_for(gone(), 10)


async def test_malformed_message_is_an_error(console):
    stream = await console.stream(SERVICE, "Shell")
    await stream.send(b"\xff\xff not an Any")
    with pytest.raises(errors.InvalidArgument, match="malformed"):
        while await stream.recv() is not None:
            pass


@pytest.mark.parametrize("debug", [True, False])
async def test_agent_serves_the_console_only_with_task_debug(tmp_path, debug):
    server = build_server(TaskParams(debug=debug), share=str(tmp_path), ns_dir=str(tmp_path / "ns"),
                          runc_root=str(tmp_path / "runc"))
    server.load_task_services()
    found = server.lookup(SERVICE, "Shell")
    assert (not isinstance(found, str)) is debug
