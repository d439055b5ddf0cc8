"""The Task API servicer: containerd.task.v3.Task and containerd.task.v2.Task over one TaskBackend.

Each method validates ids, converts the wire message into the backend's dataclasses, delegates,
and renders the answer; errors travel as kuasar_shared.errors types and are mapped by the ttrpc
server. v2 and v3 are field-for-field identical, so both service names share the handlers.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, Type, TypeVar, Union

from google.protobuf import any_pb2, empty_pb2, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from kuasar_shared.api.cgroups.v1 import metrics_pb2
from kuasar_shared.api.containerd.runc.options import oci_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.containerd.types.task import task_pb2
from kuasar_shared import tracing
from kuasar_shared.errors import Code, InvalidArgument, KuasarError, NotFound, code_of, from_code
from kuasar_shared.ids import validate_id
from kuasar_shared.values import CgroupStats, ExitInfo, Mount, Stdio
from kuasar_shared.task.backend import CreateTask, ExecProcess, TaskBackend
from kuasar_shared.task.journal import REQUEST_ID_KEY, Answer, Pending, RequestJournal
from kuasar_shared.ttrpc.service import CallContext, Service

__all__ = ["TaskService", "TASK_SERVICES", "NAMESPACE_KEY", "METRICS_TYPE_URL", "Observer", "timestamp",
           "metrics_any"]

TASK_SERVICES = ("containerd.task.v3.Task", "containerd.task.v2.Task")
NAMESPACE_KEY = "containerd-namespace-ttrpc"
METRICS_TYPE_URL = metrics_pb2.Metrics.DESCRIPTOR.full_name
#: calls with effects, journaled when the task front tags them (MUTATING in shared/native/taskfront.c)
MUTATING = frozenset(("Create", "Start", "Delete", "Exec", "Kill", "Pause", "Resume", "Checkpoint", "ResizePty",
                      "CloseIO", "Update", "Shutdown"))

log = logging.getLogger(__name__)
Handler = Callable[[CallContext, Any], Awaitable[Any]]
#: told (method, gRPC code name, seconds) after every call: the metrics, when enabled
Observer = Callable[[str, str, float], None]
#: the responses that carry an exit status and time
_ExitResponse = TypeVar("_ExitResponse", bound=Union[shim_pb2.DeleteResponse, shim_pb2.WaitResponse])


def timestamp(when: Optional[datetime]) -> Optional[timestamp_pb2.Timestamp]:
    if when is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(when.astimezone(timezone.utc).replace(tzinfo=None))
    return ts


def metrics_any(stats: CgroupStats) -> any_pb2.Any:
    """Render cgroup numbers as io.containerd.cgroups.v1.Metrics, the shape CRI reads."""
    m = metrics_pb2.Metrics()
    m.pids.current = stats.pids_current
    m.pids.limit = stats.pids_limit
    m.cpu.usage.total = stats.cpu_total_ns
    m.cpu.usage.user = stats.cpu_user_ns
    m.cpu.usage.kernel = stats.cpu_kernel_ns
    m.memory.usage.usage = stats.memory_usage
    m.memory.usage.limit = stats.memory_limit
    m.memory.usage.max = stats.memory_max_usage
    m.memory.usage.failcnt = stats.memory_failcnt
    m.memory.rss = stats.memory_rss
    m.memory.cache = stats.memory_cache
    m.memory.total_inactive_file = stats.memory_total_inactive_file
    m.memory_oom_control.oom_kill = stats.memory_oom_kill
    return any_pb2.Any(type_url=METRICS_TYPE_URL, value=m.SerializeToString())


def _json_any(value: any_pb2.Any, what: str) -> Dict[str, Any]:
    if not value.value:
        return {}
    try:
        decoded = json.loads(value.value)
    except ValueError as err:
        raise InvalidArgument(f"{what} is not valid JSON ({value.type_url}): {err}") from err
    if not isinstance(decoded, dict):
        raise InvalidArgument(f"{what} must be a JSON object")
    return decoded


def _options(value: any_pb2.Any) -> Dict[str, Any]:
    if not value.type_url.endswith("containerd.runc.v1.Options"):
        return {}
    try:
        opts = oci_pb2.Options.FromString(value.value)
    except DecodeError as err:
        raise InvalidArgument(f"malformed containerd.runc.v1.Options: {err}") from err
    from google.protobuf import json_format  # ~0.1 s to import in a TCG guest; only runc Options need it

    return json_format.MessageToDict(opts, preserving_proto_field_name=True)


def _exec_id(exec_id: str) -> str:
    return validate_id(exec_id, "exec") if exec_id else ""


def _create_task(ctx: CallContext, req: shim_pb2.CreateTaskRequest) -> CreateTask:
    if req.checkpoint or req.parent_checkpoint:
        raise InvalidArgument("restoring from a checkpoint is not supported")
    if not req.bundle or not os.path.isabs(req.bundle):
        raise InvalidArgument(f"task {req.id!r}: bundle must be an absolute path, got {req.bundle!r}")
    return CreateTask(
        id=validate_id(req.id, "container"), bundle=req.bundle,
        rootfs=tuple(Mount(m.type, m.source, m.target, tuple(m.options)) for m in req.rootfs),
        stdio=Stdio(req.stdin, req.stdout, req.stderr, req.terminal),
        namespace=ctx.get(NAMESPACE_KEY), options=_options(req.options))


def _exit(resp: _ExitResponse, info: ExitInfo) -> _ExitResponse:
    resp.exit_status = info.exit_status
    ts = timestamp(info.exited_at)
    if ts is not None:
        resp.exited_at.CopyFrom(ts)
    return resp


_RESPONSES: Dict[str, Type[Message]] = {"Create": shim_pb2.CreateTaskResponse, "Start": shim_pb2.StartResponse,
              "Delete": shim_pb2.DeleteResponse, **{m: empty_pb2.Empty for m in MUTATING - {"Create", "Start",
                                                                                         "Delete"}}}


class TaskService:
    """Builds the ttrpc services for a backend. ``services()`` returns v3 and v2.

    With a ``journal``, calls with effects that carry a request id run at most once: see
    :mod:`kuasar_shared.task.journal` and :meth:`_settle`.
    """

    def __init__(self, backend: TaskBackend, journal: Optional[RequestJournal] = None,
                 observe: Optional[Observer] = None) -> None:
        self.backend = backend
        self.journal = journal
        self.observe = observe

    def services(self) -> List[Service]:
        table: Dict[str, Tuple[Type[Message], Handler]] = {
            "Create": (shim_pb2.CreateTaskRequest, self.create),
            "Start": (shim_pb2.StartRequest, self.start),
            "Delete": (shim_pb2.DeleteRequest, self.delete),
            "Exec": (shim_pb2.ExecProcessRequest, self.exec),
            "State": (shim_pb2.StateRequest, self.state),
            "Kill": (shim_pb2.KillRequest, self.kill),
            "Wait": (shim_pb2.WaitRequest, self.wait),
            "Pids": (shim_pb2.PidsRequest, self.pids),
            "Pause": (shim_pb2.PauseRequest, self.pause),
            "Resume": (shim_pb2.ResumeRequest, self.resume),
            "Checkpoint": (shim_pb2.CheckpointTaskRequest, self.checkpoint),
            "ResizePty": (shim_pb2.ResizePtyRequest, self.resize_pty),
            "CloseIO": (shim_pb2.CloseIORequest, self.close_io),
            "Update": (shim_pb2.UpdateTaskRequest, self.update),
            "Stats": (shim_pb2.StatsRequest, self.stats),
            "Connect": (shim_pb2.ConnectRequest, self.connect),
            "Shutdown": (shim_pb2.ShutdownRequest, self.shutdown),
        }
        out = []
        for name in TASK_SERVICES:
            svc = Service(name)
            for method, (req_type, handler) in table.items():
                call = self._once(method, handler) if method in MUTATING else handler
                if self.observe is not None or tracing.enabled():
                    call = self._observed(method, call)
                svc.unary(method, req_type, call)
            out.append(svc)
        return out

    def _observed(self, method: str, handler: Handler) -> Handler:
        """``handler`` in a server span (continuing the caller's trace when its ttrpc metadata carries
        ``traceparent``), timed and counted by its code for the metrics."""
        async def observed(ctx: CallContext, req: Any) -> Any:
            begin = time.monotonic()
            code = Code.OK
            metadata = [(key, values[0]) for key, values in ctx.metadata.items() if values]
            with tracing.server_span("Task/" + method, metadata, **{
                    "rpc.system": "ttrpc", "rpc.service": ctx.service, "rpc.method": method,
                    "kuasar.container_id": getattr(req, "id", ""), "kuasar.exec_id": getattr(req, "exec_id", "")
                    }) as span:
                try:
                    return await handler(ctx, req)
                except KuasarError as err:
                    code = code_of(err)
                    raise
                except asyncio.CancelledError:
                    late = ctx.deadline is not None and asyncio.get_running_loop().time() >= ctx.deadline
                    code = Code.DEADLINE_EXCEEDED if late else Code.CANCELLED
                    raise
                except Exception:
                    code = Code.INTERNAL
                    raise
                finally:
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", int(code))
                    if self.observe is not None:
                        self.observe(method, code.name, time.monotonic() - begin)
        return observed

    def _once(self, method: str, handler: Handler) -> Handler:
        """``handler`` answered from the journal when its request id was answered before."""
        async def once(ctx: CallContext, req: Any) -> Any:
            request_id = ctx.get(REQUEST_ID_KEY)
            if self.journal is None or not RequestJournal.valid(request_id):
                return await handler(ctx, req)
            journal = self.journal
            seen = journal.lookup(request_id)
            if isinstance(seen, Answer):
                log.info("%s %s replayed after a task server restart: answered from the journal", method,
                         request_id)
                if seen.code:
                    raise from_code(seen.code, seen.message)
                return _RESPONSES[method].FromString(seen.payload)
            if seen is None:
                journal.begin(request_id)
            try:
                result = await (self._settle(method, handler, ctx, req) if isinstance(seen, Pending)
                                else handler(ctx, req))
            except KuasarError as err:
                journal.finish(request_id, Answer(int(code_of(err)), err.message, b""))
                raise
            journal.finish(request_id, Answer(0, "", result.SerializeToString()))
            return result
        return once

    async def _settle(self, method: str, handler: Handler, ctx: CallContext, req: Any) -> Any:
        """Finish a call a previous server died in: what already happened is answered, not done again.

        Create and Exec are judged by the process's state (a second Create of a created container
        would fail; a Create that left no record has its leftovers removed by the backend and runs
        again), Start by the backend (:meth:`TaskBackend.interrupted_start`: a Start of a
        process the runtime did start is answered with its pid); Kill, Delete and the rest
        are safe to run again (a repeated signal to the same process, a Delete of what is gone
        answers NOT_FOUND, which containerd takes as deleted).
        """
        log.warning("%s of %s was interrupted by a task server restart; settling it", method, req.id)
        exec_id = getattr(req, "exec_id", "")
        try:
            st = await self.backend.state(validate_id(req.id, "container"), _exec_id(exec_id))
        except NotFound:
            st = None
        if st is not None:
            if method == "Create" and st.pid:
                return shim_pb2.CreateTaskResponse(pid=st.pid)
            if method == "Create":  # the record exists but the process was never made: start over
                await self.backend.delete(req.id, "")
            elif method == "Start":
                pid = await self.backend.interrupted_start(req.id, _exec_id(exec_id))
                if pid:
                    return shim_pb2.StartResponse(pid=pid)
            elif method == "Exec":
                return empty_pb2.Empty()
        elif method == "Create":
            await self.backend.interrupted_create(_create_task(ctx, req))
        return await handler(ctx, req)

    async def create(self, ctx: CallContext, req: shim_pb2.CreateTaskRequest) -> shim_pb2.CreateTaskResponse:
        return shim_pb2.CreateTaskResponse(pid=await self.backend.create(_create_task(ctx, req)))

    async def start(self, ctx: CallContext, req: shim_pb2.StartRequest) -> shim_pb2.StartResponse:
        pid = await self.backend.start(validate_id(req.id, "container"), _exec_id(req.exec_id))
        return shim_pb2.StartResponse(pid=pid)

    async def delete(self, ctx: CallContext, req: shim_pb2.DeleteRequest) -> shim_pb2.DeleteResponse:
        info = await self.backend.delete(validate_id(req.id, "container"), _exec_id(req.exec_id))
        return _exit(shim_pb2.DeleteResponse(pid=info.pid), info)

    async def exec(self, ctx: CallContext, req: shim_pb2.ExecProcessRequest) -> empty_pb2.Empty:
        if not req.exec_id:
            raise InvalidArgument("exec_id is required")
        spec = _json_any(req.spec, "exec process spec")
        if not spec.get("args"):
            raise InvalidArgument(f"exec {req.exec_id}: process.args must not be empty")
        await self.backend.exec(ExecProcess(validate_id(req.id, "container"), _exec_id(req.exec_id),
                                            Stdio(req.stdin, req.stdout, req.stderr, req.terminal), spec))
        return empty_pb2.Empty()

    async def state(self, ctx: CallContext, req: shim_pb2.StateRequest) -> shim_pb2.StateResponse:
        st = await self.backend.state(validate_id(req.id, "container"), _exec_id(req.exec_id))
        resp = shim_pb2.StateResponse(
            id=st.id, exec_id=st.exec_id, bundle=st.bundle, pid=st.pid, status=st.status.name,
            stdin=st.stdio.stdin, stdout=st.stdio.stdout, stderr=st.stdio.stderr, terminal=st.stdio.terminal,
            exit_status=st.exit_status)
        ts = timestamp(st.exited_at)
        if ts is not None:
            resp.exited_at.CopyFrom(ts)
        return resp

    async def kill(self, ctx: CallContext, req: shim_pb2.KillRequest) -> empty_pb2.Empty:
        if not 0 < req.signal < 65:
            raise InvalidArgument(f"invalid signal {req.signal}")
        await self.backend.kill(validate_id(req.id, "container"), _exec_id(req.exec_id), req.signal, req.all)
        return empty_pb2.Empty()

    async def wait(self, ctx: CallContext, req: shim_pb2.WaitRequest) -> shim_pb2.WaitResponse:
        info = await self.backend.wait(validate_id(req.id, "container"), _exec_id(req.exec_id))
        return _exit(shim_pb2.WaitResponse(), info)

    async def pids(self, ctx: CallContext, req: shim_pb2.PidsRequest) -> shim_pb2.PidsResponse:
        pids = await self.backend.pids(validate_id(req.id, "container"))
        return shim_pb2.PidsResponse(processes=[task_pb2.ProcessInfo(pid=p) for p in pids])

    async def pause(self, ctx: CallContext, req: shim_pb2.PauseRequest) -> empty_pb2.Empty:
        await self.backend.pause(validate_id(req.id, "container"))
        return empty_pb2.Empty()

    async def resume(self, ctx: CallContext, req: shim_pb2.ResumeRequest) -> empty_pb2.Empty:
        await self.backend.resume(validate_id(req.id, "container"))
        return empty_pb2.Empty()

    async def checkpoint(self, ctx: CallContext, req: shim_pb2.CheckpointTaskRequest) -> empty_pb2.Empty:
        await self.backend.checkpoint(validate_id(req.id, "container"), req.path)
        return empty_pb2.Empty()

    async def resize_pty(self, ctx: CallContext, req: shim_pb2.ResizePtyRequest) -> empty_pb2.Empty:
        await self.backend.resize_pty(validate_id(req.id, "container"), _exec_id(req.exec_id), req.width, req.height)
        return empty_pb2.Empty()

    async def close_io(self, ctx: CallContext, req: shim_pb2.CloseIORequest) -> empty_pb2.Empty:
        await self.backend.close_io(validate_id(req.id, "container"), _exec_id(req.exec_id), req.stdin)
        return empty_pb2.Empty()

    async def update(self, ctx: CallContext, req: shim_pb2.UpdateTaskRequest) -> empty_pb2.Empty:
        await self.backend.update(validate_id(req.id, "container"), _json_any(req.resources, "resources"),
                                  dict(req.annotations))
        return empty_pb2.Empty()

    async def stats(self, ctx: CallContext, req: shim_pb2.StatsRequest) -> shim_pb2.StatsResponse:
        stats = await self.backend.stats(validate_id(req.id, "container"))
        return shim_pb2.StatsResponse(stats=metrics_any(stats))

    async def connect(self, ctx: CallContext, req: shim_pb2.ConnectRequest) -> shim_pb2.ConnectResponse:
        pid = await self.backend.connect(validate_id(req.id, "container"))
        return shim_pb2.ConnectResponse(shim_pid=os.getpid(), task_pid=pid, version="3")

    async def shutdown(self, ctx: CallContext, req: shim_pb2.ShutdownRequest) -> empty_pb2.Empty:
        await self.backend.shutdown(req.id, req.now)
        return empty_pb2.Empty()
