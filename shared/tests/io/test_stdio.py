"""Stdio plumbing against real child processes: FIFOs (engine fifo io) and the Streaming service."""
import asyncio
import fcntl
import os
import socket
import struct
import subprocess
import termios

import pytest
from google.protobuf import any_pb2

from kuasar_shared.api.containerd.services.streaming.v1 import streaming_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.errors import FailedPrecondition, InvalidArgument
from kuasar_shared.io import StreamingHub, open_process_io, stream_id_of
from kuasar_shared.values import Stdio
from kuasar_shared.ttrpc import Client, Server

SVC = "containerd.services.streaming.v1.Streaming"


def _any(msg) -> bytes:
    a = any_pb2.Any(type_url=msg.DESCRIPTOR.full_name, value=msg.SerializeToString())  # no prefix, as containerd
    return a.SerializeToString()


def _spawn(pio, script):
    proc = subprocess.Popen(["sh", "-c", script], stdin=pio.stdin if pio.stdin is not None else subprocess.DEVNULL,
                            stdout=pio.stdout, stderr=pio.stderr, close_fds=True)
    pio.child_started()
    return proc


def test_stream_id_of():
    assert stream_id_of("ttrpc+unix:///run/x.sock?streaming_id=abc-stdout") == "abc-stdout"
    assert stream_id_of("/var/run/fifo/abc-stdout") is None
    assert stream_id_of("") is None
    with pytest.raises(InvalidArgument):
        stream_id_of("ttrpc+unix:///run/x.sock?streaming_id=")


async def test_fifo_stdout_and_stderr(tmp_path):
    out, err = str(tmp_path / "c-stdout"), str(tmp_path / "c-stderr")
    os.mkfifo(out)
    os.mkfifo(err)
    rout = os.open(out, os.O_RDONLY | os.O_NONBLOCK)
    rerr = os.open(err, os.O_RDONLY | os.O_NONBLOCK)
    pio = await open_process_io(Stdio(stdout=out, stderr=err), None, "c")
    proc = _spawn(pio, "echo to-out; echo to-err >&2")
    await asyncio.to_thread(proc.wait)
    await pio.close()
    assert os.read(rout, 100) == b"to-out\n"
    assert os.read(rerr, 100) == b"to-err\n"
    os.close(rout)
    os.close(rerr)


async def test_fifo_errors(tmp_path):
    with pytest.raises(InvalidArgument, match="absolute"):
        await open_process_io(Stdio(stdout="relative/x"), None)
    with pytest.raises(InvalidArgument, match="missing"):
        await open_process_io(Stdio(stdout=str(tmp_path / "missing")), None)
    (tmp_path / "file").write_text("")
    with pytest.raises(InvalidArgument, match="not a FIFO"):
        await open_process_io(Stdio(stdout=str(tmp_path / "file")), None)
    with pytest.raises(InvalidArgument, match="streaming"):
        await open_process_io(Stdio(stdout="ttrpc+unix:///x?streaming_id=a-stdout", terminal=True), None)
    with pytest.raises(InvalidArgument, match="streaming"):
        await open_process_io(Stdio(stdout="ttrpc+unix:///x?streaming_id=a-stdout"), None)


async def test_fifo_stdin_and_close_io(tmp_path):
    fin, fout = str(tmp_path / "in"), str(tmp_path / "out")
    os.mkfifo(fin)
    os.mkfifo(fout)
    wfd = os.open(fin, os.O_RDWR)
    rout = os.open(fout, os.O_RDONLY | os.O_NONBLOCK)
    pio = await open_process_io(Stdio(stdin=fin, stdout=fout), None, "c")
    proc = _spawn(pio, "cat")
    os.write(wfd, b"hello stdin\n")
    await asyncio.sleep(0.3)
    pio.close_stdin()
    rc = await asyncio.wait_for(asyncio.to_thread(proc.wait), 10)
    assert rc == 0
    assert os.read(rout, 100) == b"hello stdin\n"
    await pio.close()
    os.close(wfd)
    os.close(rout)


@pytest.fixture
async def hub_server(tmp_path):
    hub = StreamingHub()
    srv = Server([hub.service()])
    path = str(tmp_path / "task.sock")
    await srv.listen_unix(path)
    yield hub, path
    await srv.shutdown()


async def _open(path, sid):
    c = await Client.connect_unix(path)
    st = await c.stream(SVC, "Stream")
    await st.send(_any(streaming_pb2.StreamInit(id=sid)))
    first = any_pb2.Any.FromString(await st.recv())
    assert first.type_url.endswith("google.protobuf.Empty")
    return c, st


async def test_streaming_stdout_opened_before_create(hub_server):
    hub, path = hub_server
    url = f"ttrpc+unix://{path}?streaming_id=c1-stdout"
    c, st = await _open(path, "c1-stdout")  # containerd opens the stream at container create time
    await st.send(_any(transfer_pb2.WindowUpdate(update=65536)))
    pio = await open_process_io(Stdio(stdout=url), hub, "c1")
    proc = _spawn(pio, "echo streamed; echo more")
    await asyncio.to_thread(proc.wait)
    got = b""
    while True:
        msg = await asyncio.wait_for(st.recv(), 5)
        if msg is None:
            break
        a = any_pb2.Any.FromString(msg)
        assert a.type_url.endswith("containerd.types.transfer.Data")
        got += transfer_pb2.Data.FromString(a.value).data
    assert got == b"streamed\nmore\n"
    await pio.close()
    await c.close()
    assert hub.endpoint_count == 0


async def test_streaming_output_buffered_until_stream_opens(hub_server):
    hub, path = hub_server
    pio = await open_process_io(Stdio(stderr=f"ttrpc+unix://{path}?streaming_id=late-stderr"), hub, "late")
    proc = _spawn(pio, "echo early >&2")
    await asyncio.to_thread(proc.wait)
    c, st = await _open(path, "late-stderr")
    a = any_pb2.Any.FromString(await asyncio.wait_for(st.recv(), 5))
    assert transfer_pb2.Data.FromString(a.value).data == b"early\n"
    assert await asyncio.wait_for(st.recv(), 5) is None
    await pio.close()
    await c.close()


async def test_streaming_stdin_with_window_updates(hub_server):
    hub, path = hub_server
    tmp_out = os.pipe()
    pio = await open_process_io(Stdio(stdin=f"ttrpc+unix://{path}?streaming_id=e1-stdin"), hub, "e1")
    proc = subprocess.Popen(["sh", "-c", "wc -c"], stdin=pio.stdin, stdout=tmp_out[1], close_fds=True)
    pio.child_started()
    os.close(tmp_out[1])
    c, st = await _open(path, "e1-stdin")
    win = any_pb2.Any.FromString(await st.recv())
    assert win.type_url.endswith("WindowUpdate")
    assert transfer_pb2.WindowUpdate.FromString(win.value).update == 32768
    for _ in range(10):
        await st.send(_any(transfer_pb2.Data(data=b"x" * 10000)))
    await st.close_send()
    assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 10) == 0
    assert os.read(tmp_out[0], 100).strip() == b"100000"
    os.close(tmp_out[0])
    await pio.close()
    await c.close()


async def test_stream_without_init_is_rejected(hub_server):
    hub, path = hub_server
    async with await Client.connect_unix(path) as c:
        st = await c.stream(SVC, "Stream")
        await st.send(_any(transfer_pb2.Data(data=b"x")))
        from kuasar_shared.errors import InvalidArgument as IA
        with pytest.raises(IA, match="StreamInit"):
            await asyncio.wait_for(st.recv(), 5)


async def test_terminal_copies_between_fifos_and_the_master_it_receives(tmp_path):
    """A terminal process: the master arrives over the console socket (as runc sends it), engine
    stdin reaches the pty, pty output reaches the engine's stdout FIFO, resize sets the size."""
    fin, fout = str(tmp_path / "in"), str(tmp_path / "out")
    os.mkfifo(fin)
    os.mkfifo(fout)
    engine_in = os.open(fin, os.O_RDWR)
    engine_out = os.open(fout, os.O_RDONLY | os.O_NONBLOCK)
    pio = await open_process_io(Stdio(stdin=fin, stdout=fout, terminal=True), None, name="tty")
    try:
        assert pio.stdin is None and pio.stdout is None and pio.console_socket
        with pytest.raises(FailedPrecondition):
            pio.resize(80, 24)
        master, slave = os.openpty()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as runtime:
            runtime.connect(pio.console_socket)
            socket.send_fds(runtime, [b"console"], [master])
        os.close(master)
        await pio.attach_console()
        pio.resize(100, 40)
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(slave, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        assert (rows, cols) == (40, 100)
        os.write(engine_in, b"typed\n")
        assert await asyncio.get_running_loop().run_in_executor(None, os.read, slave, 100) == b"typed\n"
        os.write(slave, b"printed")
        os.close(slave)  # the process is gone: the copier sees EIO and closes the engine's stdout
        await pio.wait()
        os.set_blocking(engine_out, True)
        data = b""
        while True:
            chunk = os.read(engine_out, 100)
            if not chunk:
                break
            data += chunk
        assert data == b"typed\r\nprinted"  # the terminal echoes what was typed
    finally:
        await pio.close()
        os.close(engine_in)
        os.close(engine_out)
