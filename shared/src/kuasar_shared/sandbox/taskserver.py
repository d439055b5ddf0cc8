"""Start, re-adopt and talk to a sandbox type's task server (one process for every pod of the type).

The task server outlives the sandboxer: it is spawned in its own session and recorded in
``<dir>/task-server.json`` (pid, start time, socket). A restarted sandboxer re-adopts a recorded
server that is still alive and answering ttrpc, and starts a new one otherwise; while running, it
restarts a server that dies (:meth:`TaskServer.supervise`) on the same socket path, so the task
address the engine holds stays valid. Containers survive both: the task server re-adopts them.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import sys
from typing import TYPE_CHECKING, Optional, Sequence

from google.protobuf import empty_pb2

from kuasar_shared import process
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.errors import Internal, KuasarError, NotFound, Unavailable
from kuasar_shared.oci import ExitRecorder, ExitWatch, is_same_process, start_time
from kuasar_shared.oci.exits import EXITS_DIR
from kuasar_shared.store import CorruptState, read_json, write_json_atomic
from kuasar_shared.ttrpc import Client

if TYPE_CHECKING:
    from kuasar_shared.daemon.run import DaemonContext

__all__ = ["TaskServer", "TASK_SERVICE", "EXITS_DIR", "find_command", "start_task_server"]

log = logging.getLogger(__name__)

TASK_SERVICE = "containerd.task.v3.Task"
_RECORD = "task-server.json"
_SOCKET = "task.sock"
#: the task server's state directory; the leading dot keeps it out of the pod id namespace
_TASKS_DIR = ".tasks"


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


class TaskServer:
    """The sandboxer's handle on the task server.

    Resource handling: :meth:`close` drops the sandboxer's connection only; the server keeps
    running for the engine's task connections.
    """

    #: seconds to wait for a new server's socket
    start_timeout = 10.0

    def __init__(self, directory: str, command: Sequence[str], pid: int, socket_path: str,
                 log_level: str = "info", log_file: Optional[str] = None) -> None:
        self.directory = directory
        self.command = list(command)
        self.pid = pid
        self.socket_path = socket_path
        self.log_level = log_level
        self.log_file = log_file
        self._client: Optional[Client] = None
        self._watch: Optional[ExitWatch] = None
        self._restart: Optional["asyncio.Task[None]"] = None

    @property
    def address(self) -> str:
        """The task API address handed to the engine."""
        return "ttrpc+unix://" + self.socket_path

    def __repr__(self) -> str:
        return f"TaskServer(pid={self.pid}, address={self.address!r})"

    @classmethod
    async def ensure(cls, directory: str, command: Sequence[str], log_level: str = "info",
                     log_file: Optional[str] = None) -> "TaskServer":
        """Re-adopt the recorded task server of ``directory`` or start ``command`` as a new one.

        The command is called with ``--listen <socket> --dir <directory>/.tasks --pods-dir <directory>
        --log-level <level>``.

        A new server logs to our stderr, or appends to ``log_file`` when given (``--daemon``).
        """
        record_path = os.path.join(directory, _RECORD)
        try:
            record = read_json(record_path)
            server = cls(directory, command, int(record["pid"]), str(record["socket"]), log_level, log_file)
            if is_same_process(server.pid, record.get("start_time")) and await server.ping():
                log.info("re-adopted task server pid %d at %s", server.pid, server.address)
                return server
            log.warning("recorded task server pid %s is gone or not answering; starting a new one",
                        record.get("pid"))
        except FileNotFoundError:
            pass
        except (CorruptState, KeyError, TypeError, ValueError) as err:
            log.warning("ignoring unreadable %s: %s", record_path, err)
        server = cls(directory, command, 0, os.path.join(os.path.abspath(directory), _SOCKET), log_level,
                     log_file)
        await server._spawn()
        return server

    async def _spawn(self) -> None:
        """Start a new server process on :attr:`socket_path` and record it."""
        directory, log_level, socket_path = self.directory, self.log_level, self.socket_path
        tasks_dir = os.path.join(os.path.abspath(directory), _TASKS_DIR)
        argv = self.command + ["--listen", socket_path, "--dir", tasks_dir,
                                  "--pods-dir", os.path.abspath(directory), "--log-level", log_level]
        if os.path.exists(socket_path):
            os.unlink(socket_path)
        log_fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600) \
            if self.log_file else None
        try:
            child = process.spawn(argv, stdin=process.DEVNULL, stdout=log_fd, stderr=log_fd,
                                  start_new_session=True)
        finally:
            if log_fd is not None:
                os.close(log_fd)
        self.pid = child.pid
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while not await self.ping():
            if child.returncode is not None:
                raise Internal(f"task server {' '.join(argv)} exited with status {child.returncode}")
            if loop.time() > deadline:
                child.kill()
                raise Internal(f"task server did not listen on {socket_path} within "
                               f"{self.start_timeout} s")
            await asyncio.sleep(0.02)
        write_json_atomic(os.path.join(directory, _RECORD),
                          {"pid": child.pid, "start_time": start_time(child.pid), "socket": socket_path})
        log.info("started task server pid %d at %s", child.pid, self.address)

    def supervise(self) -> None:
        """Restart the server whenever it exits, until :meth:`close`."""
        self._watch = ExitWatch(self.pid, self._on_exit)

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
                self._client = await Client.connect_unix(self.socket_path, timeout=2.0)
            except (OSError, KuasarError) as err:
                raise Unavailable(f"task server at {self.socket_path} is unreachable: {err}") from err
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
        """Ask the server to kill (``now``: and delete) every container of a pod."""
        client = await self._connection()
        try:
            await client.call(TASK_SERVICE, "Shutdown", shim_pb2.ShutdownRequest(id=sandbox_id, now=now),
                              empty_pb2.Empty, timeout=30.0)
        except NotFound:
            pass

    async def close_connection(self) -> None:
        """Drop the sandboxer's ttrpc connection (reopened on the next call)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.close()

    async def close(self) -> None:
        """Stop supervising and drop the connection; the server process keeps running."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._restart is not None:
            self._restart.cancel()
            await asyncio.gather(self._restart, return_exceptions=True)
            self._restart = None
        await self.close_connection()


async def start_task_server(ctx: "DaemonContext", command: Sequence[str], log_name: str,
                            own_children: Sequence[int] = ()) -> TaskServer:
    """The task server of the sandboxer's ``--dir``, re-adopted or started, and restarted whenever it exits.

    Processes orphaned by a dead task server re-parent to the sandboxer: their exits are recorded
    in ``<dir>/exits`` for the next task server. ``own_children``: the sandboxer's other children
    (helpers), whose exits are not recorded. A new server logs to ``<dir>/<log_name>`` with
    ``--daemon``, else to the sandboxer's stderr.
    """
    args = ctx.args
    os.makedirs(args.dir, mode=0o700, exist_ok=True)
    log_file = os.path.join(args.dir, log_name) if args.daemon else None
    server = await TaskServer.ensure(args.dir, command, args.log_level, log_file)
    server.supervise()
    exits = ExitRecorder(os.path.join(args.dir, EXITS_DIR))
    ctx.reaper.add_listener(exits.listener(lambda pid: pid == server.pid or pid in own_children))
    return server
