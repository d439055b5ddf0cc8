"""Start, re-adopt and talk to a sandbox type's task server (one process for every pod of the type).

The task server outlives the sandboxer: it is spawned in its own session and recorded in
``<dir>/task-server.json`` (pid, start time, socket). A restarted sandboxer re-adopts a recorded
server that is still alive and answering ttrpc, and starts a new one otherwise; while running, it
restarts a server that dies (:meth:`TaskServer.supervise`) on the same socket path, so the task
address the engine holds stays valid. Containers survive both: the task server re-adopts them.

With ``front=True`` (runc, wasm, quark) the engine's socket belongs to a task front
(``kuasar-taskfront``, a C program built into this package from the project's ``native/taskfront.c``,
whose header comment is its specification; recorded and supervised the same way) and the task server listens
on a private socket behind it: the engine's open connections and calls in flight then survive a
task server crash, and :func:`upgrade` replaces the server with new code the same way.

A sandboxer that finds no running server makes its first one from a :class:`~kuasar_shared.sandbox.zygote.TaskZygote`
forked at start-up (:func:`fork_task_zygote`, or :func:`fork_first_task_server` from a sandboxer's ``main()``), which
shares the sandboxer's interpreter pages; restarts and upgrades spawn the installed command.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Optional, Sequence, Union

from google.protobuf import empty_pb2

from kuasar_shared import native, process
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.daemon.reaper import ExitEvent, get_reaper
from kuasar_shared.errors import Internal, KuasarError, NotFound, Unavailable
from kuasar_shared.process_identity import ExitWatch, is_same_process, start_time
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.exits import EXITS_DIR
from kuasar_shared.sandbox.zygote import TaskZygote
from kuasar_shared.statefiles import CorruptState, read_json, write_json_atomic
from kuasar_shared.ttrpc import Client

if TYPE_CHECKING:
    from kuasar_shared.daemon.run import DaemonContext

__all__ = ["TaskProgram", "TaskServer", "TASK_SERVICE", "EXITS_DIR", "find_command", "fork_first_task_server",
           "fork_task_zygote", "front_executable", "start_task_server", "upgrade"]

log = logging.getLogger(__name__)

TASK_SERVICE = "containerd.task.v3.Task"
_RECORD = "task-server.json"
_SOCKET = "task.sock"
#: the task server's private socket behind a task front
_BACKEND_SOCKET = "task-backend.sock"
#: the task server's metrics, read by the sandboxer's metrics endpoint at each scrape
_METRICS_SOCKET = "task-metrics.sock"
#: the task server's state directory; the leading dot keeps it out of the pod id namespace
_TASKS_DIR = ".tasks"
#: seconds a stopping task server gets to finish calls in flight (its DRAIN_TIMEOUT, plus start-up)
DRAIN_SECONDS = 40.0


def front_executable() -> str:
    """The path of the task front program, ``kuasar-taskfront``.

    :raise FileNotFoundError: it was not built (kuasar-shared was installed without its C part).
    """
    return native.program(native.__file__, "kuasar-taskfront", "kuasar-shared", "native/taskfront.c")


def find_command(script: str, module: str) -> list[str]:
    """The task server's console ``script`` next to our interpreter (same venv / prefix), else from
    PATH, else ``python -m module``."""
    beside = os.path.join(os.path.dirname(sys.executable), script)
    if os.access(beside, os.X_OK):
        return [beside]
    found = shutil.which(script)
    if found:
        return [found]
    return [sys.executable, "-m", module]


@dataclass(frozen=True)
class TaskProgram:
    """A sandbox type's task server program, as its sandboxer starts it.

    ``name`` is its console script, its process name (``PR_SET_NAME``, also of a forked first server) and,
    with ``--daemon``, its log ``<dir>/<name>.log``; ``module`` is the module whose ``main(argv)`` serves
    (what the zygote imports); ``command`` is how it is spawned (:func:`find_command`).
    """

    name: str
    module: str
    command: tuple[str, ...]

    @classmethod
    def find(cls, name: str, module: str) -> "TaskProgram":
        """The program with the installed command of ``name`` (``python -m module`` when none is)."""
        return cls(name, module, tuple(find_command(name, module)))


class TaskServer:
    """The sandboxer's handle on the task server.

    Resource handling: :meth:`close` drops the sandboxer's connection only; the server keeps
    running for the engine's task connections.
    """

    #: seconds to wait for a new server's socket
    start_timeout = 10.0

    def __init__(self, directory: str, command: Sequence[str], pid: int, socket_path: str,
                 log_level: str = "info", log_file: Optional[str] = None, backend_path: str = "",
                 front_pid: int = 0) -> None:
        self.directory = directory
        self.command = list(command)
        self.pid = pid
        #: the engine's socket: the front's when there is one, else the server's
        self.socket_path = socket_path
        #: where the server listens (behind a front: a private socket)
        self.backend_path = backend_path or socket_path
        self.front_pid = front_pid
        self.log_level = log_level
        self.log_file = log_file
        #: the unix socket of the server's metrics ("" when it serves none)
        self.metrics_path = ""
        self._client: Optional[Client] = None
        self._watch: Optional[ExitWatch] = None
        self._front_watch: Optional[ExitWatch] = None
        self._restart: Optional["asyncio.Task[None]"] = None
        self._front_restart: Optional["asyncio.Task[None]"] = None
        #: where the next server comes from instead of spawning :attr:`command` (used once)
        self.zygote: Optional[TaskZygote] = None

    @property
    def has_front(self) -> bool:
        return self.backend_path != self.socket_path

    @property
    def address(self) -> str:
        """The task API address handed to the engine."""
        return "ttrpc+unix://" + self.socket_path

    def __repr__(self) -> str:
        return f"TaskServer(pid={self.pid}, address={self.address!r})"

    @classmethod
    async def ensure(cls, directory: str, command: Sequence[str], log_level: str = "info",
                     log_file: Optional[str] = None, front: bool = False,
                     zygote: Optional[TaskZygote] = None) -> "TaskServer":
        """Re-adopt the recorded task server of ``directory`` or start ``command`` as a new one.

        The command is called with ``--listen <socket> --dir <directory>/.tasks --pods-dir <directory>
        --log-level <level>``. With ``front``, a task front owns ``<directory>/task.sock`` (re-adopted
        or started too) and the server listens on ``<directory>/task-backend.sock``.

        A new server logs to our stderr, or appends to ``log_file`` when given (``--daemon``). With
        ``zygote``, a new server is that child running ``command`` (see :mod:`kuasar_shared.sandbox.zygote`).
        """
        base = os.path.abspath(directory)
        socket_path = os.path.join(base, _SOCKET)
        server = cls(directory, command, 0, socket_path, log_level, log_file,
                     os.path.join(base, _BACKEND_SOCKET) if front else socket_path)
        server.zygote = zygote
        record = server._read_record()
        pid = int(record.get("pid", 0))
        if front and pid and record.get("socket") == socket_path and is_same_process(pid, record.get("start_time")):
            log.warning("task server pid %d serves the engine without a task front (older version): stopping it "
                        "once to put a front before its successor", pid)
            await _stop(pid, DRAIN_SECONDS)
        if front:
            found = record.get("front")
            recorded: Dict[str, Any] = found if isinstance(found, dict) else {}
            front_pid = int(recorded.get("pid", 0))
            if front_pid and is_same_process(front_pid, recorded.get("start_time")):
                server.front_pid = front_pid
                log.info("re-adopted task front pid %d at %s", front_pid, server.address)
            else:
                await server._spawn_front()
        if pid and record.get("socket") == server.backend_path and is_same_process(pid, record.get("start_time")):
            server.pid = pid
            if await server.ping():
                log.info("re-adopted task server pid %d at %s", pid, server.backend_path)
                return server
        if pid:
            log.warning("recorded task server pid %d is gone or not answering; starting a new one", pid)
        await server._spawn()
        return server

    def _read_record(self) -> Dict[str, Any]:
        path = os.path.join(self.directory, _RECORD)
        try:
            record = read_json(path)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
            return record
        except FileNotFoundError:
            return {}
        except (CorruptState, ValueError) as err:
            log.warning("ignoring unreadable %s: %s", path, err)
            return {}

    def _write_record(self) -> None:
        record: Dict[str, Any] = {"pid": self.pid, "start_time": start_time(self.pid), "socket": self.backend_path}
        if self.has_front:
            record["front"] = {"pid": self.front_pid, "start_time": start_time(self.front_pid),
                               "socket": self.socket_path}
        write_json_atomic(os.path.join(self.directory, _RECORD), record)

    def _log_fd(self) -> Optional[int]:
        return os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) \
            if self.log_file else None

    def _spawn_logged(self, argv: list[str]) -> process.Process:
        """Spawn ``argv`` in its own session, its output going to our log file."""
        log_fd = self._log_fd()
        try:
            return process.spawn(argv, stdin=process.DEVNULL, stdout=log_fd, stderr=log_fd, start_new_session=True)
        finally:
            if log_fd is not None:
                os.close(log_fd)

    async def _await_listening(self, child: Union[process.Process, "_Forked"], argv: list[str],
                               listening: Callable[[], Awaitable[bool]],
                               what: str, where: str, interval: float) -> None:
        """Wait until ``listening()``.

        :raise Internal: naming ``what`` when it exits first or does not listen within :attr:`start_timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while not await listening():
            if child.returncode is not None:
                raise Internal(f"{what} {' '.join(argv)} exited with status {child.returncode}")
            if loop.time() > deadline:
                child.kill()
                raise Internal(f"{what} did not listen on {where} within {self.start_timeout} s")
            await asyncio.sleep(interval)

    async def _spawn_front(self) -> None:
        """Start a task front on :attr:`socket_path`."""
        argv = [front_executable(), "--listen", self.socket_path, "--backend", self.backend_path]
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)

        async def listening() -> bool:
            return os.path.exists(self.socket_path)

        child = self._spawn_logged(argv)
        self.front_pid = child.pid
        await self._await_listening(child, argv, listening, "task front", self.socket_path, 0.01)
        if self.pid:
            self._write_record()
        log.info("started task front pid %d at %s", self.front_pid, self.address)

    async def _spawn(self) -> None:
        """Start a new server process on :attr:`backend_path` and record it."""
        directory, log_level, listen = self.directory, self.log_level, self.backend_path
        tasks_dir = os.path.join(os.path.abspath(directory), _TASKS_DIR)
        argv = self.command + ["--listen", listen, "--dir", tasks_dir,
                                  "--pods-dir", os.path.abspath(directory), "--log-level", log_level]
        if os.path.exists(listen):
            os.unlink(listen)
        child = self._from_zygote(argv) or self._spawn_logged(argv)
        self.pid = child.pid
        await self._await_listening(child, argv, self.ping, "task server", listen, 0.02)
        self._write_record()
        log.info("started task server pid %d at %s", self.pid, listen)

    def _from_zygote(self, argv: list[str]) -> Optional["_Forked"]:
        """The zygote made the server running ``argv``; None without one (or when it failed: spawn then)."""
        zygote, self.zygote = self.zygote, None
        if zygote is None:
            return None
        log_fd = self._log_fd()
        try:
            return _Forked(zygote.start(argv, log_fd))
        except (OSError, ValueError) as err:
            log.warning("cannot start the task server from its zygote (%s); spawning %s", err, argv[0])
            return None
        finally:
            if log_fd is not None:
                os.close(log_fd)

    def supervise(self) -> None:
        """Restart the server (and the front) whenever it exits, until :meth:`close`."""
        self._watch = ExitWatch(self.pid, self._on_exit)
        if self.has_front and self._front_watch is None:
            self._front_watch = ExitWatch(self.front_pid, self._on_front_exit)

    def _on_front_exit(self) -> None:
        log.error("task front pid %d exited; the engine's task connections are lost; starting a new one on %s",
                  self.front_pid, self.socket_path)
        self._front_watch = None
        self._front_restart = asyncio.ensure_future(self._respawn_front())

    async def _respawn_front(self) -> None:
        try:
            await self._spawn_front()
        except KuasarError as err:
            log.error("cannot restart the task front: %s; retrying in 1 s", err)
            await asyncio.sleep(1.0)
            self._on_front_exit()
            return
        self._front_watch = ExitWatch(self.front_pid, self._on_front_exit)

    def _on_exit(self) -> None:
        log.error("task server pid %d exited; starting a new one on %s", self.pid, self.socket_path)
        self._restart = asyncio.ensure_future(self._respawn())

    async def _respawn(self) -> None:
        await self.close_connection()
        try:
            await self._spawn()
        except KuasarError as err:
            log.error("cannot restart the task server: %s; retrying in 1 s", err)
            await asyncio.sleep(1.0)
            self._on_exit()
            return
        self.supervise()

    async def _connection(self) -> Client:
        if self._client is None or self._client.closed:
            try:
                self._client = await Client.connect_unix(self.backend_path, timeout=2.0)
            except (OSError, KuasarError) as err:
                raise Unavailable(f"task server at {self.backend_path} is unreachable: {err}") from err
        return self._client

    async def ping(self) -> bool:
        """True when the server answers a ttrpc call (any typed answer counts)."""
        try:
            client = await self._connection()
            await client.call(TASK_SERVICE, "Connect", shim_pb2.ConnectRequest(id=""),
                              shim_pb2.ConnectResponse, timeout=2.0)
        except Unavailable:
            await self.close_connection()
            return False
        except KuasarError:
            return True
        return True

    async def shutdown_pod(self, sandbox_id: str, now: bool) -> None:
        """Ask the server to kill (``now``: and delete) every container of a pod.

        Behind a front the call goes through it, like the engine's: a server that dies meanwhile
        gets it again from the front (journaled) instead of leaving the pod's containers behind.
        """
        request = shim_pb2.ShutdownRequest(id=sandbox_id, now=now)
        if not self.has_front:
            client = await self._connection()
            with contextlib.suppress(NotFound):
                await client.call(TASK_SERVICE, "Shutdown", request, empty_pb2.Empty, timeout=30.0)
            return
        try:
            front = await Client.connect_unix(self.socket_path, timeout=2.0)
        except (OSError, KuasarError) as err:
            raise Unavailable(f"task front at {self.socket_path} is unreachable: {err}") from err
        try:
            with contextlib.suppress(NotFound):
                await front.call(TASK_SERVICE, "Shutdown", request, empty_pb2.Empty, timeout=60.0)
        finally:
            await front.close()

    async def close_connection(self) -> None:
        """Drop the sandboxer's ttrpc connection (reopened on the next call)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def close(self) -> None:
        """Stop supervising and drop the connection; the server and front processes keep running."""
        for watch in (self._watch, self._front_watch):
            if watch is not None:
                watch.cancel()
        self._watch = self._front_watch = None
        for task in (self._restart, self._front_restart):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        self._restart = self._front_restart = None
        await self.close_connection()


class _Forked:
    """A server made by the zygote, as :meth:`TaskServer._await_listening` watches a spawned one."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._exit: Optional[ExitEvent] = None
        reaper = get_reaper()
        reaper.install()
        reaper.subscribe(pid).add_done_callback(self._on_exit)

    def _on_exit(self, future: "asyncio.Future[ExitEvent]") -> None:
        if not future.cancelled():
            self._exit = future.result()

    @property
    def returncode(self) -> Optional[int]:
        return None if self._exit is None else self._exit.status

    def kill(self) -> None:
        if self._exit is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


def fork_task_zygote(directory: str, command: Sequence[str], module: str, name: str) -> Optional[TaskZygote]:
    """A :class:`TaskZygote` of the task program ``command`` (``module``) for :func:`start_task_server`, or None when
    ``directory`` records a running task server (it is re-adopted), or ``command`` is not ours (a script
    beside our interpreter, or our interpreter's ``-m module``), or it cannot be imported or forked here
    (then it is spawned).

    Call from ``main()`` before the loop and any thread start.
    """
    ours = list(command) == [sys.executable, "-m", module] or \
        (len(command) == 1 and os.path.dirname(command[0]) == os.path.dirname(sys.executable))
    if not ours:
        return None  # a program of another installation: its code is not the one we would import
    record = TaskServer(directory, [], 0, "")._read_record()
    pid = int(record.get("pid", 0))
    if pid and is_same_process(pid, record.get("start_time")):
        return None
    try:
        return TaskZygote.fork(command, module, name)
    except (ImportError, OSError) as err:
        log.warning("cannot fork a task zygote (%s); the task server will be spawned", err)
        return None


def fork_first_task_server(args: argparse.Namespace, program: TaskProgram) -> Optional[TaskZygote]:
    """The zygote of the sandboxer's first task server (:func:`fork_task_zygote` for ``args.dir``), or None with
    ``--daemon``: python-daemon's double fork would leave it, and the orphans of its server, outside the
    sandboxer's subreaping.

    Call from ``main()`` before the loop and any thread start, after any helper the sandboxer forks (the
    zygote closes every fd it inherits, but a helper forked later would inherit the zygote's socket).
    """
    if args.daemon:
        return None
    return fork_task_zygote(args.dir, program.command, program.module, program.name)


async def start_task_server(ctx: "DaemonContext", program: TaskProgram, own_children: Sequence[int] = (),
                            zygote: Optional[TaskZygote] = None) -> TaskServer:
    """The task server of the sandboxer's ``--dir``, re-adopted or started, and restarted whenever it exits.

    It serves its metrics on ``<dir>/task-metrics.sock`` when the sandboxer has ``--metrics-listen`` (the
    sandboxer's endpoint reads them at each scrape) and exports spans to the sandboxer's ``--trace-endpoint``;
    a re-adopted server keeps the settings it was started with until it is replaced (``kuasar-ctl upgrade``).

    Processes orphaned by a dead task server re-parent to the sandboxer: their exits are recorded
    in ``<dir>/exits`` for the next task server. ``own_children``: the sandboxer's other children
    (helpers), whose exits are not recorded. A new server logs to ``<dir>/<program name>.log`` with
    ``--daemon``, else to the sandboxer's stderr. ``zygote`` (from :func:`fork_first_task_server`) makes a
    new server; unused, it is told to exit.
    """
    args = ctx.args
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    log_file = os.path.join(args.dir, program.name + ".log") if args.daemon else None
    command = list(program.command)
    metrics_path = os.path.join(os.path.abspath(args.dir), _METRICS_SOCKET)
    if getattr(args, "metrics_listen", ""):
        command += ["--metrics-listen", "unix:" + metrics_path]
    if getattr(args, "trace_endpoint", ""):
        command += ["--trace-endpoint", args.trace_endpoint]
    try:
        server = await TaskServer.ensure(args.dir, command, args.log_level, log_file, front=True, zygote=zygote)
    finally:
        if zygote is not None:
            zygote.close()
    if getattr(args, "metrics_listen", ""):
        server.metrics_path = metrics_path
    server.supervise()
    exits = ExitRecorder(os.path.join(args.dir, EXITS_DIR))
    unclaimed = [zygote.pid] if zygote is not None else []

    def ours(pid: int) -> bool:
        if pid in unclaimed:
            unclaimed.clear()  # the zygote exits once; a container process may get its pid later
            return True
        return pid in (server.pid, server.front_pid) or pid in own_children

    ctx.reaper.add_listener(exits.listener(ours))
    return server


async def _stop(pid: int, timeout: float) -> None:
    """SIGTERM ``pid`` and wait for it to go; SIGKILL after ``timeout`` seconds."""
    started = start_time(pid)
    os.kill(pid, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while is_same_process(pid, started):
        if loop.time() > deadline:
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.05)


async def upgrade(directory: str, timeout: float = 60.0) -> int:
    """Replace the running task server of a sandboxer's ``directory`` with the code now installed.

    The server is told to stop (SIGTERM): it stops accepting, finishes the calls with effects in
    flight and exits; its supervising sandboxer starts the installed command on the same private
    socket, and the task front sends the calls it held (Wait included) to the new server. Returns
    the new server's pid.

    :raise NotFound: no live task server is recorded; Unavailable: no successor answered within
        ``timeout`` seconds (is the sandboxer running?).
    """
    server = TaskServer(directory, [], 0, "")
    record = server._read_record()
    old = int(record.get("pid", 0))
    if not old or not is_same_process(old, record.get("start_time")):
        raise NotFound(f"no running task server is recorded in {os.path.join(directory, _RECORD)}")
    if not isinstance(record.get("front"), dict):
        log.warning("the task server of %s has no task front: the engine will see its connections close",
                    directory)
    os.kill(old, signal.SIGTERM)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        record = server._read_record()
        new = int(record.get("pid", 0))
        if new and new != old and is_same_process(new, record.get("start_time")):
            server.backend_path = str(record.get("socket", ""))
            if await server.ping():
                await server.close_connection()
                return new
        await asyncio.sleep(0.05)
    raise Unavailable(f"task server pid {old} was stopped but no new one answered within {timeout} s; "
                      f"is the sandboxer of {directory} running?")
