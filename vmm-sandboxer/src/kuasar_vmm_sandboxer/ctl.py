"""``kuasar-ctl vm-exec`` and ``vm-shell``: debug access to a vmm pod's guest, outside every container
(and ``templates``, from :mod:`kuasar_vmm_sandboxer.templates_ctl`).

kuasar-ctl finds these through its ``kuasar.ctl`` entry-point group (:func:`add_commands`), so the
type-neutral client names no vmm service.

vm-exec: the call is the guest agent's ``grpc.SandboxService/ExecVMProcess`` on the pod's task address (the
host relay carries it to the guest like any task call). That RPC answers the command's output only
(upstream's proto has no exit code), so the command runs in a subshell followed by a marker line
carrying ``$?``, which is parsed back off the end. Its stderr is merged into stdout because the guest
answers the two streams concatenated, which would push the marker away from the end. A ttrpc deadline
makes the guest kill the command; it then exits 124 like ``timeout(1)`` and ``kuasar-ctl exec``.

vm-shell: an interactive shell from the guest agent's debug console
(``kuasar.vmm.debug.v1.Console/Shell``, see ``kuasar_vmm_task.console``), which only pods started with
debug have (annotation ``io.kuasar.vmm.debug=true`` or the sandboxer's ``[hypervisor].debug``; the
sandboxer reports it as ``debug`` in the pod's status info). The stream goes through the pod's task
address like vm-exec. Our terminal is put in raw mode while the shell runs, so keys such as ^C reach
the guest; its window size is sent at the start and on SIGWINCH. Without a terminal, the end of our
input ends the shell's input. The exit status is the shell's.
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import os
import shlex
import signal
import stat
import struct
import sys
import termios
import tty
from typing import Any, Optional, Sequence, Tuple

from google.protobuf import any_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.types.transfer import streaming_pb2 as transfer_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.ctl.engine import Engine
from kuasar_shared.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument, Unimplemented
from kuasar_shared.io.streamclient import receive
from kuasar_shared.ttrpc import Client, ClientStream

from kuasar_vmm_sandboxer import templates_ctl

__all__ = ["RC_MARKER", "TIMEOUT_EXIT_CODE", "CONSOLE_SERVICE", "DEBUG_ANNOTATION", "wrap_command",
           "split_output", "vm_exec", "vm_shell", "run_shell", "add_commands"]

RC_MARKER = "__KUASAR_RC="
TIMEOUT_EXIT_CODE = 124
CONSOLE_SERVICE = "kuasar.vmm.debug.v1.Console"
DEBUG_ANNOTATION = "io.kuasar.vmm.debug"
_SERVICE = "grpc.SandboxService"
_UNIX = "ttrpc+unix://"
_CHUNK = 32768


async def _ready_vmm_pod(engine: Engine, pod_id: str, command: str) -> Any:
    """The ControllerStatusResponse of the ready vmm pod ``pod_id``."""
    pod, status = await engine.pod_status(pod_id)
    if pod.sandboxer != "vmm":
        raise InvalidArgument("%s: pod %s is a %s pod, not a vmm (VM) pod" % (command, pod_id[:13], pod.sandboxer))
    if status is None or pod.state != "SANDBOX_READY" or not status.address.startswith(_UNIX):
        raise FailedPrecondition("%s: pod %s is not ready" % (command, pod_id[:13]))
    return status


def wrap_command(argv: Sequence[str]) -> str:
    """The ``sh -c`` text run in the guest: ``argv`` (stderr merged) then the exit-code marker."""
    if not argv:
        raise InvalidArgument("vm-exec: no command given")
    return "( %s ) 2>&1; printf '\\n%s%%s\\n' \"$?\"" % (shlex.join(argv), RC_MARKER)


def split_output(out: str) -> tuple[str, int]:
    """(the command's own output, its exit code) from the answer to :func:`wrap_command`.

    :raise Internal: the marker is missing (the guest shell did not finish the wrapper).
    """
    body, sep, tail = out.rpartition("\n" + RC_MARKER)
    code = tail.strip()
    if not sep or not code.isdigit():
        raise Internal("vm-exec: the guest's answer has no exit code marker: %r" % out[-200:])
    return body, int(code)


async def vm_exec(engine: Engine, pod_id: str, argv: Sequence[str], timeout: Optional[float] = None,
                  stdin: bytes = b"") -> tuple[str, int]:
    """Run ``argv`` in the guest of the ready vmm pod ``pod_id``; returns (output, exit code).

    :raise InvalidArgument: the pod is not a vmm pod. :raise FailedPrecondition: it is not ready.
    """
    status = await _ready_vmm_pod(engine, pod_id, "vm-exec")
    command = wrap_command(argv)
    client = await Client.connect_unix(status.address[len(_UNIX):])
    try:
        answer = await client.call(_SERVICE, "ExecVMProcess",
                                   sandbox_pb2.ExecVMProcessRequest(command=command, stdin=stdin),
                                   sandbox_pb2.ExecVMProcessResponse, timeout=timeout)
    except DeadlineExceeded:
        return "", TIMEOUT_EXIT_CODE
    finally:
        await client.close()
    return split_output(answer.out)


def _not_debug(pod_id: str) -> FailedPrecondition:
    return FailedPrecondition("vm-shell: pod %s was not started with debug; set annotation %s=true"
                              % (pod_id[:13], DEBUG_ANNOTATION))


async def vm_shell(engine: Engine, pod_id: str, stdin: int = 0, stdout: int = 1) -> int:
    """Run the guest's debug shell of the ready vmm pod ``pod_id`` on our terminal; returns its exit status.

    :raise InvalidArgument: not a vmm pod. :raise FailedPrecondition: not ready, or not a debug pod.
    """
    status = await _ready_vmm_pod(engine, pod_id, "vm-shell")
    if status.info.get("debug") != "true":
        raise _not_debug(pod_id)
    try:
        return await run_shell(status.address[len(_UNIX):], stdin, stdout)
    except Unimplemented:
        raise _not_debug(pod_id) from None


def _pack(msg: Any) -> any_pb2.Any:
    out = any_pb2.Any()
    out.Pack(msg)
    return out


def _window_size(fd: int) -> Optional[Tuple[int, int]]:
    """(rows, columns) of the terminal ``fd``, None when it has none."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return rows, cols


async def _read_some(fd: int) -> bytes:
    """Up to 32 KiB from ``fd`` (b"" at its end) without blocking the loop. Files that cannot be polled
    (regular files, /dev/null) never block, so they are read in the executor."""
    loop = asyncio.get_running_loop()
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return await loop.run_in_executor(None, os.read, fd, _CHUNK)
    ready: "asyncio.Future[None]" = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)
    try:
        loop.add_reader(fd, wake)
    except PermissionError:
        return await loop.run_in_executor(None, os.read, fd, _CHUNK)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
    return os.read(fd, _CHUNK)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def _send_keys(stream: ClientStream, fd: int) -> None:
    while True:
        chunk = await _read_some(fd)
        if not chunk:
            await stream.close_send()
            return
        await stream.send(_pack(transfer_pb2.Data(data=chunk)))


async def _send_size(stream: ClientStream, fd: int) -> None:
    size = _window_size(fd)
    if size is not None:
        await stream.send(_pack(shim_pb2.ResizePtyRequest(height=size[0], width=size[1])))


async def run_shell(socket_path: str, stdin: int = 0, stdout: int = 1) -> int:
    """The debug shell of the guest behind the task socket ``socket_path``, on ``stdin``/``stdout``.

    :raise Unimplemented: the guest has no debug console. :raise Internal: it sent no exit status.
    """
    client = await Client.connect_unix(socket_path)
    saved = termios.tcgetattr(stdin) if os.isatty(stdin) else None
    loop = asyncio.get_running_loop()
    keys: "Optional[asyncio.Future[None]]" = None
    try:
        stream = await client.stream(CONSOLE_SERVICE, "Shell", metadata={"term": os.environ.get("TERM", "")})
        if saved is not None:
            tty.setraw(stdin, termios.TCSADRAIN)
            await _send_size(stream, stdin)
            loop.add_signal_handler(signal.SIGWINCH, lambda: asyncio.ensure_future(_send_size(stream, stdin)))
        keys = asyncio.ensure_future(_send_keys(stream, stdin))
        code: Optional[int] = None

        async def show(data: bytes) -> None:
            _write_all(stdout, data)

        def exited(msg: any_pb2.Any) -> None:
            nonlocal code
            if msg.TypeName() == shim_pb2.WaitResponse.DESCRIPTOR.full_name:
                done = shim_pb2.WaitResponse()
                msg.Unpack(done)
                code = done.exit_status
        await receive(stream, show, exited)
        if code is None:
            raise Internal("vm-shell: the guest ended the shell without an exit status")
        return code
    finally:
        if keys is not None:
            keys.cancel()
            await asyncio.gather(keys, return_exceptions=True)
        if saved is not None:
            loop.remove_signal_handler(signal.SIGWINCH)
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        await client.close()


async def _vm_exec_command(engine: Engine, args: argparse.Namespace) -> int:
    argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    out, code = await vm_exec(engine, engine.store.resolve_pod(args.pod), argv, timeout=args.timeout,
                              stdin=sys.stdin.buffer.read() if args.interactive else b"")
    sys.stdout.write(out)
    sys.stdout.flush()
    return code


async def _vm_shell_command(engine: Engine, args: argparse.Namespace) -> int:
    return await vm_shell(engine, engine.store.resolve_pod(args.pod), sys.stdin.fileno(), sys.stdout.fileno())


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """The ``kuasar.ctl`` entry point: add ``vm-exec``, ``vm-shell`` and ``templates`` to kuasar-ctl."""
    vm = sub.add_parser("vm-exec", help="run a command in a vmm pod's guest (debug)")
    vm.add_argument("-i", "--interactive", action="store_true", help="send our stdin to the command")
    vm.add_argument("--timeout", type=float, help="kill the command after this many seconds (exit code 124)")
    vm.add_argument("pod")
    vm.add_argument("cmd", nargs=argparse.REMAINDER)
    vm.set_defaults(run=_vm_exec_command)
    shell = sub.add_parser("vm-shell", help="interactive shell in the guest of a vmm pod started with debug "
                           "(annotation io.kuasar.vmm.debug=true)")
    shell.add_argument("pod")
    shell.set_defaults(run=_vm_shell_command)
    templates_ctl.add_commands(sub)
