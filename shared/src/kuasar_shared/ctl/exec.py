"""``kuasar-ctl exec``: run a command in a running container like CRI ExecSync.

Call order (containerd execInternal): Task.State -> [streams ``<exec id>-stdout/-stderr`` opened
for io_type streaming, or FIFOs created and opened] -> Exec (OCI Process = the container's process
with new args) -> State -> Wait + Start -> ... -> Kill(exec, 9) (NOT_FOUND is fine) -> Delete(exec).
The command's exit code is returned; when ``timeout`` passes the process is killed and the result
is :data:`TIMEOUT_EXIT` (124, like coreutils ``timeout``).
"""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import stat
import sys
from typing import Any, Callable, Optional, Sequence

from google.protobuf import any_pb2, empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2 as task_pb2
from kuasar_shared.ctl.clients import TaskClient
from kuasar_shared.ctl.engine import RUNNING, Engine
from kuasar_shared.ctl.io import copy_fifo, copy_stream, make_fifos, open_fifo_reader, streaming_url
from kuasar_shared.ctl.spec import exec_process_spec
from kuasar_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.io.streamclient import data_message, open_stream
from kuasar_shared.ttrpc import Client, ClientStream

__all__ = ["TIMEOUT_EXIT", "PROCESS_TYPE_URL", "exec_sync"]

TIMEOUT_EXIT = 124
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
_STOPPED = 3
_DRAIN_SECONDS = 2.0
Sink = Callable[[bytes], None]


def _write_to(stream: Any) -> Sink:
    def write(data: bytes) -> None:
        stream.buffer.write(data)
        stream.buffer.flush()
    return write


async def _read_stdin_chunks(feed: Callable[[bytes], Any], done: Callable[[], Any]) -> None:
    """Feed our stdin to the process; regular files are read whole, pipes/ttys asynchronously."""
    mode = os.fstat(0).st_mode
    if stat.S_ISREG(mode):
        with open(0, "rb", closefd=False) as f:
            data = f.read()
        if data:
            await feed(data)
        await done()
        return
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader),
                                                os.fdopen(os.dup(0), "rb", 0))
    try:
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            await feed(chunk)
    finally:
        transport.close()
    await done()


async def exec_sync(engine: Engine, ctr_id: str, args: Sequence[str], *, stdin: bool = False,
                    timeout: Optional[float] = None, stdout: Optional[Sink] = None,
                    stderr: Optional[Sink] = None) -> int:
    """Run ``args`` in the container and return its exit code (124 on timeout).

    Output goes to ``stdout``/``stderr`` sinks (default: our own). With ``stdin`` our stdin is
    forwarded until EOF.

    :raise FailedPrecondition: the container is not running.
    :raise InvalidArgument: empty command.
    """
    if not args:
        raise InvalidArgument("exec needs a command, e.g. kuasar-ctl exec <ctr> -- sh -c 'echo hi'")
    ctr = engine.store.load_container(ctr_id)
    if ctr.state != RUNNING:
        raise FailedPrecondition(f"container {ctr_id[:13]} is {ctr.state}, not running")
    pod = engine.store.load_pod(ctr.pod_id)
    task = engine.task(pod.address)
    state = await task.call("State", task_pb2.StateRequest(id=ctr_id), task_pb2.StateResponse, 10.0)
    if state.status == _STOPPED:
        raise FailedPrecondition(f"container {ctr_id[:13]} is not running (its task has stopped)")
    with open(os.path.join(engine.store.bundle_dir(ctr_id), "config.json")) as f:
        process = exec_process_spec(json.load(f), args)
    exec_id = secrets.token_hex(32)
    sinks = [stdout or _write_to(sys.stdout), stderr or _write_to(sys.stderr)]
    io_dir = os.path.join(engine.store.container_dir(ctr_id), "io", exec_id)
    stream_client: Optional[Client] = None
    copies: list[asyncio.Future[Any]] = []
    feeder: Optional[Callable[[], Any]] = None
    request = task_pb2.ExecProcessRequest(
        id=ctr_id, exec_id=exec_id,
        spec=any_pb2.Any(type_url=PROCESS_TYPE_URL, value=json.dumps(process).encode()))
    try:
        if ctr.io_type == "streaming":
            stream_client = await Client.connect(pod.address)
            outs = [await open_stream(stream_client, f"{exec_id}-{n}") for n in ("stdout", "stderr")]
            copies = [asyncio.ensure_future(copy_stream(s, sink)) for s, sink in zip(outs, sinks)]
            request.stdout = streaming_url(pod.address, f"{exec_id}-stdout")
            request.stderr = streaming_url(pod.address, f"{exec_id}-stderr")
            if stdin:
                in_stream = await open_stream(stream_client, f"{exec_id}-stdin", window=None)
                request.stdin = streaming_url(pod.address, f"{exec_id}-stdin")
                feeder = _stream_feeder(in_stream)
        else:
            paths = make_fifos(io_dir, exec_id, stdin=stdin)
            request.stdout, request.stderr, request.stdin = paths.stdout, paths.stderr, paths.stdin
            fds = [open_fifo_reader(paths.stdout), open_fifo_reader(paths.stderr)]
            copies = [asyncio.ensure_future(copy_fifo(fd, sink)) for fd, sink in zip(fds, sinks)]
            if stdin:
                feeder = _fifo_feeder(os.open(paths.stdin, os.O_RDWR | os.O_CLOEXEC))
        await task.call("Exec", request, empty_pb2.Empty, None)
        return await _run(task, ctr_id, exec_id, timeout, copies, feeder)
    finally:
        for fut in copies:
            fut.cancel()
        await asyncio.gather(*copies, return_exceptions=True)
        if stream_client is not None:
            await stream_client.close()
        shutil.rmtree(io_dir, ignore_errors=True)


def _fifo_feeder(fd: int) -> Callable[[], Any]:
    async def feed(data: bytes) -> None:
        await asyncio.to_thread(os.write, fd, data)

    async def done() -> None:
        os.close(fd)
    return lambda: _read_stdin_chunks(feed, done)


def _stream_feeder(stream: ClientStream) -> Callable[[], Any]:
    async def feed(data: bytes) -> None:
        await stream.send(data_message(data))

    async def done() -> None:
        await stream.close_send()
    return lambda: _read_stdin_chunks(feed, done)


async def _run(task: TaskClient, ctr_id: str, exec_id: str, timeout: Optional[float],
               copies: list[asyncio.Future[Any]], feeder: Optional[Callable[[], Any]]) -> int:
    """State -> Wait + Start -> wait (killing on timeout) -> drain output -> Kill -> Delete."""
    ids = {"id": ctr_id, "exec_id": exec_id}
    await task.call("State", task_pb2.StateRequest(**ids), task_pb2.StateResponse, 10.0)
    waiter = asyncio.ensure_future(task.call("Wait", task_pb2.WaitRequest(**ids), task_pb2.WaitResponse, None))
    pump = None
    try:
        await task.call("Start", task_pb2.StartRequest(**ids), task_pb2.StartResponse, None)
        if feeder is not None:
            pump = asyncio.ensure_future(feeder())
        timed_out = False
        done, _ = await asyncio.wait([waiter], timeout=timeout)
        if not done:
            timed_out = True
            await _kill(task, ids)
        waited = await asyncio.wait_for(asyncio.shield(waiter), 30.0)
        if copies:
            await asyncio.wait(copies, timeout=_DRAIN_SECONDS)
        await _kill(task, ids)
        try:
            await task.call("Delete", task_pb2.DeleteRequest(**ids), task_pb2.DeleteResponse, 10.0)
        except NotFound:
            pass
        return TIMEOUT_EXIT if timed_out else waited.exit_status
    finally:
        for fut in (waiter, pump):
            if fut is not None:
                fut.cancel()
        await asyncio.gather(*(f for f in (waiter, pump) if f is not None), return_exceptions=True)


async def _kill(task: TaskClient, ids: dict[str, str]) -> None:
    try:
        await task.call("Kill", task_pb2.KillRequest(id=ids["id"], exec_id=ids["exec_id"], signal=signal.SIGKILL),
                        empty_pb2.Empty, 10.0)
    except (NotFound, FailedPrecondition):
        pass
