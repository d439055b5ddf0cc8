"""The gRPC servicer of ``containerd.services.sandbox.v1.Controller``: validate, convert, delegate.

This is the protocol edge of the Sandbox API. Each method validates the request (ids through
:func:`kuasar_shared.ids.validate_id`), converts it into the plain dataclasses of
:mod:`kuasar_shared.sandbox.api`, calls one :class:`~kuasar_shared.sandbox.api.Sandboxer` method
and converts the answer back. Typed errors are mapped to gRPC codes once, here, through
:func:`kuasar_shared.errors.code_of`; anything untyped becomes INTERNAL with its message and is
logged with its traceback, and the server keeps serving. Cancellation (the engine dropped a
long-held Wait) is never caught.

Wire behaviour that differs from a literal reading of the proto, on purpose:
  * Stop and Shutdown of an unknown id answer OK (as Kuasar does; containerd retries them).
  * Start answers ``version = 3`` and the sandboxer's ``ttrpc+unix://`` address; a pod that does
    not become ready is stopped again and reported INTERNAL.
  * Platform answers the real machine (``linux``/``amd64``), not Kuasar's ``x86``.
  * Update only acts on ``fields`` containing ``extensions.tasks``; other fields are ignored with
    a warning, as Kuasar does.
"""
from __future__ import annotations

import asyncio
import calendar
import functools
import logging
import platform
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, Optional, TypeVar

from google.protobuf import json_format, timestamp_pb2
from google.protobuf.message import DecodeError, Message

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import metrics_pb2, platform_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared import tracing
from kuasar_shared.errors import Code, Internal, InvalidArgument, KuasarError, NotFound, Unavailable, code_of
from kuasar_shared.grpcserver import CallContext, Handler
from kuasar_shared.ids import validate_id
from kuasar_shared.sandbox.api import CreateSandbox, Sandboxer
from kuasar_shared.sandbox.tasks_extension import TASKS_EXTENSION, diff, parse_tasks
from kuasar_shared.values import Mount
from kuasar_shared.task.service import METRICS_TYPE_URL, metrics_any

__all__ = ["SandboxController", "controller_methods", "READY",
           "NOT_READY", "METRICS_TYPE_URL", "host_platform"]

_log = logging.getLogger(__name__)

#: CRI PodSandboxState names; containerd looks Status.state up in runtime.PodSandboxState_value.
READY = "SANDBOX_READY"
NOT_READY = "SANDBOX_NOTREADY"
#: type_url of ControllerMetricsResponse.metrics.data, spelled the way containerd's typeurl does.
_UPDATE_TASKS_FIELD = "extensions." + TASKS_EXTENSION

# Errors that are a normal part of the conversation with an engine, not worth a warning.
_QUIET = (NotFound,)
_SERVICE = "containerd.services.sandbox.v1.Controller"
#: what a controller reports each call to: (method, gRPC code name, seconds)
Observer = Callable[[str, str, float], None]

# GOARCH names for platform.machine() values (containerd's platforms.Normalize).
_ARCHITECTURES = {
    "x86_64": ("amd64", ""), "amd64": ("amd64", ""), "aarch64": ("arm64", ""), "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"), "armv6l": ("arm", "v6"), "i386": ("386", ""), "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""), "s390x": ("s390x", ""), "riscv64": ("riscv64", ""),
    "loongarch64": ("loong64", ""),
}

_Req = TypeVar("_Req", bound=Message)
#: a servicer method as the gRPC server calls it (the controller, request bytes, context -> response bytes)
_Method = Callable[["SandboxController", bytes, CallContext], Awaitable[bytes]]
_METHODS = ("Create", "Start", "Platform", "Stop", "Wait", "Status", "Shutdown", "Metrics", "Update")


def host_platform() -> platform_pb2.Platform:
    """The real platform of this machine in containerd's spelling (``linux``/``amd64``)."""
    machine = platform.machine().lower()
    arch, variant = _ARCHITECTURES.get(machine, (machine, ""))
    return platform_pb2.Platform(os="linux", architecture=arch, variant=variant)


def _timestamp(value: Optional[datetime]) -> Optional[timestamp_pb2.Timestamp]:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return timestamp_pb2.Timestamp(seconds=calendar.timegm(value.utctimetuple()),
                                   nanos=value.microsecond * 1000)


def _datetime(ts: timestamp_pb2.Timestamp) -> datetime:
    return datetime.fromtimestamp(ts.seconds, tz=timezone.utc).replace(microsecond=ts.nanos // 1000)


def _edge(request_type: type[_Req]) -> Callable[[Callable[[Any, _Req], Awaitable[Message]]], _Method]:
    """Make a servicer method a handler of the gRPC server: decode the request, run the method, map its
    errors to a gRPC status once, encode the response.

    A request that does not decode -> INVALID_ARGUMENT naming the method (grpcio answered such a request
    UNKNOWN and logged an error with a traceback); KuasarError -> its code and message; any other
    Exception -> INTERNAL with the message and a logged traceback. CancelledError passes through.
    """

    def wrap(method: Callable[[Any, _Req], Awaitable[Message]]) -> _Method:
        name = method.__name__
        path = "/%s/%s" % (_SERVICE, name)

        @functools.wraps(method)
        async def handler(self: "SandboxController", data: bytes, context: CallContext) -> bytes:
            begin = time.monotonic()
            code = Code.CANCELLED
            request: Optional[_Req] = None
            problem = ""
            try:
                request = request_type.FromString(data)
            except DecodeError as err:
                problem = "malformed %s request: %s" % (path, err)
            with tracing.server_span("Controller/" + name, context.invocation_metadata(),
                                     **{"rpc.system": "grpc", "rpc.service": _SERVICE, "rpc.method": name,
                                        "kuasar.sandbox_id": getattr(request, "sandbox_id", "")}) as span:
                message = ""
                try:
                    if request is None:
                        raise InvalidArgument(problem)
                    response = await method(self, request)
                    code = Code.OK
                except KuasarError as err:
                    level = logging.DEBUG if isinstance(err, _QUIET) else logging.WARNING
                    _log.log(level, "%s: %s (%s)", name, err, code_of(err).name)
                    code, message = code_of(err), err.message
                except Exception as err:  # an unexpected failure must not take the server down
                    _log.exception("%s failed unexpectedly", name)
                    code, message = Code.INTERNAL, "%s: %s" % (type(err).__name__, err)
                finally:
                    # before the reply leaves: a scrape that follows the reply sees the call counted
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", int(code))
                    if self.observe is not None:
                        self.observe(name, code.name, time.monotonic() - begin)
                if code is Code.OK:
                    return response.SerializeToString()
                await context.abort(code, message)

        return handler

    return wrap


class SandboxController:
    """``containerd.services.sandbox.v1.Controller`` over one :class:`Sandboxer`.

    Holds no pod state of its own except one lock per pod while an Update is diffed and applied.
    """

    def __init__(self, sandboxer: Sandboxer, observe: Optional[Observer] = None) -> None:
        self._sandboxer = sandboxer
        #: called after every call with (method, gRPC code name, seconds): the metrics, when enabled
        self.observe = observe
        # pod id -> (lock, number of Update calls using it); dropped when the last one is done
        self._update_locks: dict[str, tuple[asyncio.Lock, int]] = {}
        # the handlers of pending Wait calls, which last as long as their pods
        self._waits: set["asyncio.Task[Any]"] = set()
        self._released = False

    def release_waits(self) -> int:
        """End every pending Wait with UNAVAILABLE, so that a stop does not sit out its grace period
        for calls that would never finish in it. containerd's proxy controller retries a Wait that
        failed UNAVAILABLE (backing off from 128 ms) until the next sandboxer answers it; any other
        code would make it record the pod as exited."""
        self._released = True
        pending = [task for task in self._waits if not task.done()]
        for task in pending:
            task.cancel()
        return len(pending)

    @_edge(sandbox_pb2.ControllerCreateRequest)
    async def Create(self, request: sandbox_pb2.ControllerCreateRequest
                     ) -> sandbox_pb2.ControllerCreateResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        config: dict[str, Any] = {}
        raw = b""
        if request.HasField("options") and request.options.value:
            raw = request.options.value
            try:
                pod = cri_pb2.PodSandboxConfig.FromString(raw)
            except DecodeError as err:
                raise InvalidArgument("sandbox %s: options (type %r) is not a runtime.v1.PodSandboxConfig: %s"
                                      % (sandbox_id, request.options.type_url, err)) from err
            config = json_format.MessageToDict(pod, preserving_proto_field_name=True)
        sandbox = request.sandbox
        created_at = (_datetime(sandbox.created_at) if sandbox.HasField("created_at")
                      else datetime.now(timezone.utc))
        req = CreateSandbox(
            id=sandbox_id, netns_path=request.netns_path, config=config, config_raw=raw,
            annotations=dict(request.annotations), labels=dict(sandbox.labels),
            sandboxer=request.sandboxer,
            rootfs=tuple(Mount(type=m.type, source=m.source, target=m.target, options=tuple(m.options))
                         for m in request.rootfs),
            extensions={key: (value.type_url, value.value) for key, value in sandbox.extensions.items()},
            created_at=created_at)
        await self._sandboxer.create(req)
        _log.info("sandbox %s created (netns %r)", sandbox_id, request.netns_path)
        return sandbox_pb2.ControllerCreateResponse(sandbox_id=sandbox_id)

    @_edge(sandbox_pb2.ControllerStartRequest)
    async def Start(self, request: sandbox_pb2.ControllerStartRequest
                    ) -> sandbox_pb2.ControllerStartResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        status = await self._sandboxer.start(sandbox_id)
        if not status.ready:
            await self._sandboxer.stop(sandbox_id, None)
            raise Internal("sandbox %s did not become ready after start (pid %d); it was stopped again"
                           % (sandbox_id, status.pid))
        _log.info("sandbox %s started (pid %d, task address %s)", sandbox_id, status.pid, status.address)
        return sandbox_pb2.ControllerStartResponse(
            sandbox_id=sandbox_id, pid=status.pid, created_at=_timestamp(status.created_at),
            address=status.address, version=status.version)

    @_edge(sandbox_pb2.ControllerPlatformRequest)
    async def Platform(self, request: sandbox_pb2.ControllerPlatformRequest
                       ) -> sandbox_pb2.ControllerPlatformResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        await self._sandboxer.status(sandbox_id)
        return sandbox_pb2.ControllerPlatformResponse(platform=host_platform())

    @_edge(sandbox_pb2.ControllerStopRequest)
    async def Stop(self, request: sandbox_pb2.ControllerStopRequest
                   ) -> sandbox_pb2.ControllerStopResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        try:
            await self._sandboxer.stop(sandbox_id, request.timeout_secs or None)
        except NotFound:
            _log.info("sandbox %s: stop of an unknown sandbox ignored", sandbox_id)
        else:
            _log.info("sandbox %s stopped", sandbox_id)
        return sandbox_pb2.ControllerStopResponse()

    @_edge(sandbox_pb2.ControllerWaitRequest)
    async def Wait(self, request: sandbox_pb2.ControllerWaitRequest
                   ) -> sandbox_pb2.ControllerWaitResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        handler = asyncio.current_task()
        if handler is not None:
            self._waits.add(handler)
        try:
            exit_status = await self._sandboxer.wait(sandbox_id)
        except asyncio.CancelledError:
            if not self._released:
                raise  # the engine went away
            raise Unavailable("sandbox %s: the sandboxer is restarting; wait again" % sandbox_id) from None
        finally:
            self._waits.discard(handler)
        return sandbox_pb2.ControllerWaitResponse(exit_status=exit_status.exit_status,
                                                  exited_at=_timestamp(exit_status.exited_at))

    @_edge(sandbox_pb2.ControllerStatusRequest)
    async def Status(self, request: sandbox_pb2.ControllerStatusRequest
                     ) -> sandbox_pb2.ControllerStatusResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        status = await self._sandboxer.status(sandbox_id, request.verbose)
        return sandbox_pb2.ControllerStatusResponse(
            sandbox_id=sandbox_id, pid=status.pid, state=READY if status.ready else NOT_READY,
            info=status.info, created_at=_timestamp(status.created_at),
            exited_at=_timestamp(status.exited_at), address=status.address, version=status.version)

    @_edge(sandbox_pb2.ControllerShutdownRequest)
    async def Shutdown(self, request: sandbox_pb2.ControllerShutdownRequest
                       ) -> sandbox_pb2.ControllerShutdownResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        try:
            await self._sandboxer.shutdown(sandbox_id)
        except NotFound:
            _log.info("sandbox %s: shutdown of an unknown sandbox ignored", sandbox_id)
        else:
            _log.info("sandbox %s shut down", sandbox_id)
        return sandbox_pb2.ControllerShutdownResponse()

    @_edge(sandbox_pb2.ControllerMetricsRequest)
    async def Metrics(self, request: sandbox_pb2.ControllerMetricsRequest
                      ) -> sandbox_pb2.ControllerMetricsResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        stats = await self._sandboxer.metrics(sandbox_id)
        if stats is None:
            return sandbox_pb2.ControllerMetricsResponse()
        metric = metrics_pb2.Metric(timestamp=_timestamp(datetime.now(timezone.utc)), id=sandbox_id,
                                    data=metrics_any(stats))
        return sandbox_pb2.ControllerMetricsResponse(metrics=metric)

    @_edge(sandbox_pb2.ControllerUpdateRequest)
    async def Update(self, request: sandbox_pb2.ControllerUpdateRequest
                     ) -> sandbox_pb2.ControllerUpdateResponse:
        sandbox_id = validate_id(request.sandbox_id, "sandbox")
        if _UPDATE_TASKS_FIELD not in request.fields:
            _log.warning("sandbox %s: update of fields %s ignored (only %s is supported)",
                         sandbox_id, list(request.fields), _UPDATE_TASKS_FIELD)
            return sandbox_pb2.ControllerUpdateResponse()
        if TASKS_EXTENSION not in request.sandbox.extensions:
            raise InvalidArgument("sandbox %s: fields names %s but sandbox.extensions has no %r entry"
                                  % (sandbox_id, _UPDATE_TASKS_FIELD, TASKS_EXTENSION))
        new = parse_tasks(request.sandbox.extensions[TASKS_EXTENSION].value)
        lock, users = self._update_locks.get(sandbox_id, (asyncio.Lock(), 0))
        self._update_locks[sandbox_id] = (lock, users + 1)
        try:
            async with lock:
                change = diff((await self._sandboxer.status(sandbox_id)).tasks, new)
                await self._sandboxer.update_tasks(sandbox_id, change)
        finally:
            lock, users = self._update_locks[sandbox_id]
            if users == 1:
                del self._update_locks[sandbox_id]
            else:
                self._update_locks[sandbox_id] = (lock, users - 1)
        _log.info("sandbox %s: tasks updated (+%d -%d tasks, +%d -%d processes)", sandbox_id,
                  len(change.added_tasks), len(change.removed_tasks), len(change.added_processes),
                  len(change.removed_processes))
        return sandbox_pb2.ControllerUpdateResponse()


def controller_methods(controller: SandboxController) -> dict[str, Handler]:
    """The method table of ``containerd.services.sandbox.v1.Controller``: full path -> handler."""
    return {"/%s/%s" % (_SERVICE, name): getattr(controller, name) for name in _METHODS}
