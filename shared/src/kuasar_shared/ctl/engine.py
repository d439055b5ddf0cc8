"""The engine: CRI operations as the same Sandbox/Task API call sequences containerd 2.x's CRI plugin makes.

    runp    [netns] Controller.Create -> Start -> Status -> Status
    create  Controller.Platform -> Status [-> Streaming/Stream <id>-stdout, -stderr]
    start   Task.Create -> Connect -> Start -> Connect -> State
    stop    State -> Kill(9) [SIGTERM first with a timeout] -> Wait, then the exit handler:
            Kill(all, 9) -> Connect -> Wait -> State -> Delete
    rm      (stop when running) no task call
    stopp   stop every container, Controller.Status -> Status -> Stop -> Status, [netns removed]
    rmp     (stopp when ready) rm every container, Controller.Status -> Shutdown -> Status

containerd's long-held Controller.Wait and Task.Wait are replaced by state queries when a command
runs (kuasar-ctl does not stay around); a task found STOPPED gets the same exit handler. Exec lives
in :mod:`kuasar_shared.ctl.exec`.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import time
from typing import Optional

from google.protobuf import any_pb2, empty_pb2, json_format, timestamp_pb2

from kuasar_shared.api.containerd.runc.options import oci_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2 as task_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import mount_pb2
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl import host, logwriter
from kuasar_shared.ctl.clients import SandboxClient, TaskClient
from kuasar_shared.ctl.config import ContainerConfig
from kuasar_shared.ctl.io import make_fifos, streaming_url
from kuasar_shared.ctl.spec import ImageConfig, SpecInputs, build_container_spec, pod_hostname
from kuasar_shared.ctl.metadata import ContainerRecord, CtlStore, PodRecord
from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, KuasarError, NotFound
from kuasar_shared.sandbox.api import TaskResource, TaskResources
from kuasar_shared.sandbox.tasks_extension import encode_tasks, update_request
from kuasar_shared.statefiles import write_json_atomic
from kuasar_shared.values import Mount

__all__ = ["Engine", "EngineOptions", "RUNNING", "CREATED", "EXITED", "UNKNOWN"]

log = logging.getLogger(__name__)
CREATED, RUNNING, EXITED, UNKNOWN = "CONTAINER_CREATED", "CONTAINER_RUNNING", "CONTAINER_EXITED", "CONTAINER_UNKNOWN"
READY, NOTREADY = "SANDBOX_READY", "SANDBOX_NOTREADY"
_TASK_STOPPED = 3


def _now() -> int:
    return time.time_ns()


def _ts(nanos: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(nanos)
    return ts


class EngineOptions:
    """Where things are: the sandboxer socket, kuasar-ctl's state root, images and IO type."""

    def __init__(self, sandboxer: str, endpoint: str, root: str, images: str, io_type: str = "fifo",
                 hint: str = "", inline_logs: bool = False, sandbox_deadline: float = 60.0) -> None:
        self.sandboxer = sandboxer
        #: seconds allowed for the calls that wait on a VM or a runtime: Controller Create/Start/Stop/
        #: Shutdown/Update and task Create/Start (a VM booting under emulation needs more)
        self.sandbox_deadline = sandbox_deadline
        #: copy container output into the CRI logs inside this process, as containerd does; only for
        #: a long-lived engine process (the CLI exits after each command and starts a log writer instead)
        self.inline_logs = inline_logs
        self.endpoint = endpoint
        self.root = root
        self.images = images
        self.io_type = io_type
        self.hint = hint


class Engine:
    """One engine session (one kuasar-ctl command). Use ``async with``; it closes its clients."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        self.store = CtlStore(options.root, options.sandboxer)
        self.sandbox = SandboxClient(options.endpoint, options.sandboxer, options.hint)
        self._tasks: dict[str, TaskClient] = {}
        self._loggers: dict[str, asyncio.Task[None]] = {}

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        for ctr_id in list(self._loggers):
            await self._stop_inline_logger(ctr_id, 0.0)
        await self.sandbox.close()
        for client in self._tasks.values():
            await client.close()

    def task(self, address: str) -> TaskClient:
        if address not in self._tasks:
            self._tasks[address] = TaskClient(address)
        return self._tasks[address]

    # -- pods ------------------------------------------------------------------------------------
    async def run_pod(self, config: api_pb2.PodSandboxConfig, netns: str = "") -> str:
        """RunPodSandbox: netns, Controller.Create, Start, Status x2; returns the pod id.

        ``netns`` is an existing network namespace to use instead of a new empty one (what CNI would
        have filled with interfaces); the caller keeps it and removes it.

        :raise AlreadyExists: a pod with the same name/namespace/uid/attempt exists.
        :raise InvalidArgument: ``netns`` is given for a host-network pod or does not exist.
        """
        self.sandbox.check()
        host_network = config.linux.security_context.namespace_options.network == 2
        if netns:
            netns = os.path.abspath(netns)
            problem = "the pod uses the host network" if host_network else host.netns_problem(netns)
            if problem:
                raise InvalidArgument(f"--netns {netns}: {problem}")
        meta = config.metadata
        name = f"{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        for pod in self.store.pods():
            if f"{pod.name}_{pod.namespace}_{pod.uid}_{pod.attempt}" == name:
                raise AlreadyExists(f"pod name {name!r} is reserved for {pod.id}")
        pod_id = secrets.token_hex(32)
        record = PodRecord(id=pod_id, name=meta.name, namespace=meta.namespace, uid=meta.uid,
                           attempt=meta.attempt, created_at=_now(), sandboxer=self.options.sandboxer,
                           runtime_handler=f"kuasar-{self.options.sandboxer}",
                           config=json_format.MessageToDict(config, preserving_proto_field_name=True),
                           labels=dict(config.labels), annotations=dict(config.annotations),
                           netns_path=netns, netns_owned=not netns)
        pod_dir = self.store.pod_dir(pod_id)
        os.makedirs(pod_dir, mode=0o700)
        try:
            if not host_network and not netns:
                record.netns_path = await host.create_netns()
            host.write_sandbox_files(pod_dir, config, pod_hostname(config))
            self.store.save_pod(record)
            created = _ts(record.created_at)
            request = sandbox_pb2.ControllerCreateRequest(
                sandbox_id=pod_id, netns_path=record.netns_path,
                options=any_pb2.Any(type_url="runtime.v1.PodSandboxConfig", value=config.SerializeToString()),
                sandbox=types_sandbox_pb2.Sandbox(
                    sandbox_id=pod_id, sandboxer=self.options.sandboxer, labels={"name": name},
                    runtime=types_sandbox_pb2.Sandbox.Runtime(name=f"io.containerd.kuasar-{self.options.sandboxer}.v1"),
                    created_at=created, updated_at=created))
            await self.sandbox.call("Create", request, self.options.sandbox_deadline)
        except BaseException:
            await self._remove_netns(record)
            self.store.remove_pod(pod_id)
            raise
        try:
            started = await self.sandbox.call("Start", sandbox_pb2.ControllerStartRequest(sandbox_id=pod_id),
                                              self.options.sandbox_deadline)
            record.pid, record.address, record.version = started.pid, started.address, started.version
            for _ in range(2):
                status = await self.sandbox.status(pod_id)
            record.state = status.state or READY
            record.address = status.address or record.address
        except BaseException:
            await self._shutdown_sandbox(pod_id)
            await self._remove_netns(record)
            self.store.remove_pod(pod_id)
            raise
        self.store.save_pod(record)
        log.info("pod %s ready, task address %s", pod_id, record.address)
        return pod_id

    async def pod_status(self, pod_id: str) -> tuple[PodRecord, Optional[sandbox_pb2.ControllerStatusResponse]]:
        """The record refreshed by Controller.Status (None when the sandboxer no longer knows it)."""
        pod = self.store.load_pod(pod_id)
        try:
            status = await self.sandbox.status(pod_id)
        except NotFound:
            pod.state = NOTREADY
            return pod, None
        pod.state = status.state or NOTREADY
        return pod, status

    async def stop_pod(self, pod_id: str) -> None:
        """StopPodSandbox: stop every running container, Status, Status, Stop, Status; remove the netns."""
        pod = self.store.load_pod(pod_id)
        for ctr in self.store.containers(pod_id):
            if ctr.state in (RUNNING, UNKNOWN):
                await self.stop_container(ctr.id, 0)
        try:
            await self.sandbox.status(pod_id)
            await self.sandbox.status(pod_id)
            await self.sandbox.call("Stop", sandbox_pb2.ControllerStopRequest(sandbox_id=pod_id),
                                    self.options.sandbox_deadline)
            await self.sandbox.status(pod_id)
        except NotFound:
            log.info("pod %s is already gone from the sandboxer", pod_id)
        await self._remove_netns(pod)
        pod.state = NOTREADY
        self.store.save_pod(pod)

    async def remove_pod(self, pod_id: str) -> None:
        """RemovePodSandbox: stop it if needed, remove its containers, Status, Shutdown, Status."""
        pod, _ = await self.pod_status(pod_id)
        running = any(c.state in (RUNNING, UNKNOWN) for c in self.store.containers(pod_id))
        if pod.state == READY or running or (pod.netns_owned and pod.netns_path and os.path.exists(pod.netns_path)):
            await self.stop_pod(pod_id)
        for ctr in self.store.containers(pod_id):
            await self.remove_container(ctr.id)
        await self._shutdown_sandbox(pod_id)
        self.store.remove_pod(pod_id)

    @staticmethod
    async def _remove_netns(pod: PodRecord) -> None:
        """Remove the pod's netns unless the caller brought it (``--netns``)."""
        if pod.netns_owned:
            await host.remove_netns(pod.netns_path)

    async def _shutdown_sandbox(self, pod_id: str) -> None:
        try:
            await self.sandbox.status(pod_id)
            await self.sandbox.call("Shutdown", sandbox_pb2.ControllerShutdownRequest(sandbox_id=pod_id),
                                    self.options.sandbox_deadline)
            await self.sandbox.status(pod_id)
        except NotFound:
            pass

    # -- containers ------------------------------------------------------------------------------
    async def create_container(self, pod_id: str, ctr: ContainerConfig, pod_config: api_pb2.PodSandboxConfig,
                               announce: bool = False) -> str:
        """CreateContainer: Platform, Status, the bundle, IO (streams opened now), the log writer.

        ``announce``: drive the container like iSulad and Kuasar's containerd fork do, announcing it
        with ``Controller.Update`` (``extensions.tasks``) before its task Create and after its removal.

        :raise FailedPrecondition: the pod is not ready. :raise AlreadyExists: name taken in the pod.
        """
        pod = self.store.load_pod(pod_id)
        await self.sandbox.platform(pod_id)
        status = await self.sandbox.status(pod_id)
        if status.state != READY:
            raise FailedPrecondition(f"pod {pod_id[:13]} is {status.state or 'not ready'}, cannot create containers")
        for other in self.store.containers(pod_id):
            if (other.name, other.attempt) == (ctr.name, ctr.attempt):
                raise AlreadyExists(f"container name {ctr.name!r} attempt {ctr.attempt} is reserved for {other.id}")
        image_path = host.resolve_image(ctr.image, self.options.images)
        ctr_id = secrets.token_hex(32)
        ctr_dir = self.store.container_dir(ctr_id)
        inputs = SpecInputs(container_id=ctr_id, sandbox_id=pod_id, sandbox_pid=status.pid, image_name=ctr.image,
                            image=ImageConfig(), oom_score_adj_floor=host.own_oom_score_adj(),
                            swap_accounting=host.swap_accounting(),
                            extra_mounts=host.sandbox_file_mounts(self.store.pod_dir(pod_id), ctr.readonly_rootfs))
        spec = build_container_spec(ctr, pod_config, inputs)
        log_path = ""
        if pod_config.log_directory and ctr.log_path:
            log_path = os.path.join(pod_config.log_directory, ctr.log_path)
        record = ContainerRecord(id=ctr_id, pod_id=pod_id, name=ctr.name, attempt=ctr.attempt, image=ctr.image,
                                 image_path=image_path, created_at=_now(), io_type=self.options.io_type,
                                 log_path=log_path, labels=dict(ctr.labels), annotations=dict(ctr.annotations),
                                 announced=announce)
        try:
            for sub in ("bundle/rootfs", "fs", "work"):
                os.makedirs(os.path.join(ctr_dir, sub), mode=0o711, exist_ok=True)
            write_json_atomic(os.path.join(ctr_dir, "bundle", "config.json"), spec)
            address = status.address or pod.address
            if self.options.io_type == "streaming":
                record.stdout = streaming_url(address, f"{ctr_id}-stdout")
                record.stderr = streaming_url(address, f"{ctr_id}-stderr")
                stream = [address, f"{ctr_id}-stdout", f"{ctr_id}-stderr"]
                await self._start_logger(record, log_path or os.devnull, None, stream)
            else:
                paths = make_fifos(os.path.join(ctr_dir, "io"), ctr_id)
                record.stdout, record.stderr = paths.stdout, paths.stderr
                await self._start_logger(record, log_path or os.devnull, [paths.stdout, paths.stderr], None)
            self.store.save_container(record)
        except BaseException:
            await self._stop_logger(record)
            self.store.remove_container(ctr_id)
            raise
        return ctr_id

    def rootfs(self, ctr: ContainerRecord) -> mount_pb2.Mount:
        ctr_dir = self.store.container_dir(ctr.id)
        return mount_pb2.Mount(type="overlay", source="overlay", options=host.overlay_options(
            ctr.image_path, os.path.join(ctr_dir, "fs"), os.path.join(ctr_dir, "work")))

    async def start_container(self, ctr_id: str) -> None:
        """StartContainer: Task.Create -> Connect -> Start -> Connect -> State.

        :raise FailedPrecondition: not in CREATED state. A failed Create/Start leaves the container
            EXITED (containerd calls Task.Delete at once) and re-raises.
        """
        ctr = self.store.load_container(ctr_id)
        if ctr.state != CREATED:
            raise FailedPrecondition(f"container {ctr_id[:13]} is {ctr.state}, not CONTAINER_CREATED")
        pod = self.store.load_pod(ctr.pod_id)
        status = await self.sandbox.status(pod.id)
        task = self.task(status.address or pod.address)
        options = oci_pb2.Options(task_api_address=task.address, task_api_version=3)
        if ctr.announced:
            await self._announce_tasks(pod.id, starting=ctr.id)
        request = task_pb2.CreateTaskRequest(
            id=ctr_id, bundle=self.store.bundle_dir(ctr_id), rootfs=[self.rootfs(ctr)], stdin=ctr.stdin,
            stdout=ctr.stdout, stderr=ctr.stderr,
            options=any_pb2.Any(type_url="containerd.runc.v1.Options", value=options.SerializeToString()))
        try:
            deadline = self.options.sandbox_deadline
            created = await task.call("Create", request, task_pb2.CreateTaskResponse, deadline)
            await task.call("Connect", task_pb2.ConnectRequest(id=ctr_id), task_pb2.ConnectResponse, 10.0)
            await task.call("Start", task_pb2.StartRequest(id=ctr_id), task_pb2.StartResponse, deadline)
        except KuasarError as err:
            try:
                await task.call("Delete", task_pb2.DeleteRequest(id=ctr_id), task_pb2.DeleteResponse, 10.0)
            except KuasarError:
                pass
            ctr.state, ctr.reason, ctr.exit_code, ctr.finished_at = EXITED, "StartError", 128, _now()
            ctr.reason = f"StartError: {err}"
            await self._stop_logger(ctr)
            self.store.save_container(ctr)
            raise
        await task.call("Connect", task_pb2.ConnectRequest(id=ctr_id), task_pb2.ConnectResponse, 10.0)
        await task.call("State", task_pb2.StateRequest(id=ctr_id), task_pb2.StateResponse, 10.0)
        ctr.state, ctr.pid, ctr.started_at = RUNNING, created.pid, _now()
        self.store.save_container(ctr)

    async def container_status(self, ctr_id: str) -> ContainerRecord:
        """The record, refreshed: a running container whose task stopped gets the exit handler."""
        ctr = self.store.load_container(ctr_id)
        if ctr.state != RUNNING:
            return ctr
        pod = self.store.load_pod(ctr.pod_id)
        task = self.task(pod.address)
        try:
            state = await task.call("State", task_pb2.StateRequest(id=ctr_id), task_pb2.StateResponse, 10.0)
        except NotFound:
            ctr.state, ctr.exit_code, ctr.reason, ctr.finished_at = EXITED, 255, "Unknown", _now()
            self.store.save_container(ctr)
            return ctr
        if state.status == _TASK_STOPPED:
            await self._handle_exit(task, ctr)
        return ctr

    async def stop_container(self, ctr_id: str, timeout: int = 0) -> None:
        """StopContainer: SIGTERM and wait up to ``timeout`` s when > 0, then SIGKILL; exit handler."""
        ctr = self.store.load_container(ctr_id)
        if ctr.state != RUNNING:
            return
        pod = self.store.load_pod(ctr.pod_id)
        task = self.task(pod.address)
        state = await task.call("State", task_pb2.StateRequest(id=ctr_id), task_pb2.StateResponse, 10.0)
        if state.status != _TASK_STOPPED:
            wait = task.call("Wait", task_pb2.WaitRequest(id=ctr_id), task_pb2.WaitResponse, None)
            waiter = asyncio.ensure_future(wait)
            try:
                if timeout > 0:
                    await self._kill(task, ctr_id, signal.SIGTERM)
                    await asyncio.wait([waiter], timeout=timeout)
                if not waiter.done():
                    await self._kill(task, ctr_id, signal.SIGKILL)
                await asyncio.wait_for(asyncio.shield(waiter), 30.0)
            finally:
                waiter.cancel()
                await asyncio.gather(waiter, return_exceptions=True)
        await self._handle_exit(task, ctr)

    @staticmethod
    async def _kill(task: TaskClient, ctr_id: str, sig: int, all_: bool = False, exec_id: str = "") -> None:
        try:
            await task.call("Kill", task_pb2.KillRequest(id=ctr_id, exec_id=exec_id, signal=sig, all=all_),
                            empty_pb2.Empty, 10.0)
        except NotFound:
            pass

    async def _handle_exit(self, task: TaskClient, ctr: ContainerRecord) -> None:
        """containerd's exit handler: Kill(all, 9), Connect, Wait, State, Delete; record the exit."""
        await self._kill(task, ctr.id, signal.SIGKILL, all_=True)
        try:
            await task.call("Connect", task_pb2.ConnectRequest(id=ctr.id), task_pb2.ConnectResponse, 10.0)
            waited = await task.call("Wait", task_pb2.WaitRequest(id=ctr.id), task_pb2.WaitResponse, 30.0)
            await task.call("State", task_pb2.StateRequest(id=ctr.id), task_pb2.StateResponse, 10.0)
            deleted = await task.call("Delete", task_pb2.DeleteRequest(id=ctr.id), task_pb2.DeleteResponse, 30.0)
            ctr.exit_code = deleted.exit_status or waited.exit_status
            ctr.finished_at = deleted.exited_at.ToNanoseconds() or waited.exited_at.ToNanoseconds() or _now()
            ctr.reason = "Completed" if ctr.exit_code == 0 else "Error"
        except NotFound:
            ctr.exit_code, ctr.reason, ctr.finished_at = 255, "Unknown", _now()
        ctr.state = EXITED
        self.store.save_container(ctr)

    async def remove_container(self, ctr_id: str) -> None:
        """RemoveContainer: force-stop a running one, stop its log writer, withdraw an announced one
        from ``extensions.tasks`` (iSulad's Purge), delete its directory."""
        ctr = self.store.load_container(ctr_id)
        if ctr.state in (RUNNING, UNKNOWN):
            await self.stop_container(ctr_id, 0)
        await self._stop_logger(ctr, 2.0)
        if ctr.announced and ctr.state != CREATED:
            try:
                await self._announce_tasks(ctr.pod_id, leaving=ctr_id)
            except NotFound:
                log.info("container %s: sandbox %s is gone, nothing to withdraw", ctr_id, ctr.pod_id)
        ctr_dir = self.store.container_dir(ctr_id)
        host.unmount_below(ctr_dir)
        self.store.remove_container(ctr_id)

    async def _announce_tasks(self, pod_id: str, starting: str = "", leaving: str = "") -> None:
        """``Controller.Update{fields: [extensions.tasks]}`` with the full list of the pod's announced
        containers: those started before (exited ones stay until removed), plus ``starting``, minus
        ``leaving``."""
        tasks = []
        for ctr in self.store.containers(pod_id):
            if not ctr.announced or ctr.id == leaving or (ctr.state == CREATED and ctr.id != starting):
                continue
            with open(os.path.join(self.store.bundle_dir(ctr.id), "config.json")) as f:
                spec = json.load(f)
            rootfs = self.rootfs(ctr)
            tasks.append(TaskResource(task_id=ctr.id, spec=spec, stdin=ctr.stdin, stdout=ctr.stdout,
                                      stderr=ctr.stderr, rootfs=(Mount(rootfs.type, rootfs.source, rootfs.target,
                                                                       tuple(rootfs.options)),)))
        request = update_request(pod_id, encode_tasks(TaskResources(tuple(tasks))))
        await self.sandbox.call("Update", request, self.options.sandbox_deadline)

    async def _start_logger(self, record: ContainerRecord, log_path: str, fifo: Optional[list[str]],
                            stream: Optional[list[str]]) -> None:
        if self.options.inline_logs:
            copier = await logwriter.LogCopier.open(log_path, fifo, stream)
            self._loggers[record.id] = asyncio.ensure_future(copier.run())
        else:
            record.logger_pid = await asyncio.to_thread(logwriter.spawn, log_path, fifo, stream)

    async def _stop_logger(self, ctr: ContainerRecord, grace: float = 0.0) -> None:
        """Let the container's log copy finish (its stdio closed), else stop it."""
        if ctr.id in self._loggers:
            await self._stop_inline_logger(ctr.id, grace)
        elif ctr.logger_pid:
            await asyncio.to_thread(self._stop_logger_process, ctr, grace)

    async def _stop_inline_logger(self, ctr_id: str, grace: float) -> None:
        task = self._loggers.pop(ctr_id)
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except asyncio.TimeoutError:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    @staticmethod
    def _stop_logger_process(ctr: ContainerRecord, grace: float) -> None:
        """Let the log writer finish (it exits after the task's stdio closed), else SIGTERM/SIGKILL it."""
        deadline = time.monotonic() + grace
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and host.process_alive(ctr.logger_pid, "kuasar_shared.ctl.logwriter"):
                os.kill(ctr.logger_pid, sig)
                deadline = time.monotonic() + 2.0
            while host.process_alive(ctr.logger_pid, "kuasar_shared.ctl.logwriter") and time.monotonic() < deadline:
                time.sleep(0.02)
            if not host.process_alive(ctr.logger_pid, "kuasar_shared.ctl.logwriter"):
                return
