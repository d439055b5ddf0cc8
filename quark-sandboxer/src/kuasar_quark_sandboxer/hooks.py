"""RunscHooks: how quark-task runs a container inside its pod's runsc sandbox.

The pod is named by the CRI annotation ``io.kubernetes.cri.sandbox-id`` (or containerd's
``<bundle>/sandbox`` file); its record ``<pods dir>/<pod id>/sandbox.json`` says how the pod's
sandbox was made (runsc binary, ``--root``, platform and network flags). The spec gets the
annotations runsc's multi-container support reads (``container-type = container``, ``sandbox-id``
= the pod's root container, whose id is the pod id), so ``runsc create`` adds the container to the
running Sentry instead of booting a new kernel; the pod's ``hostname``, ``hosts`` and ``resolv.conf``
are mounted in. runsc reports the Sentry's pid for every
container, gives a sub-container the stdio of ``runsc start``, and its exec pids are waiters:
hence the hook flags. A container that joins the pod's PID namespace (a ``pid`` entry with a path,
what containerd writes for a shared-PID pod) gets no ``pid`` entry at all: runsc then runs it in the
sandbox's own PID namespace, where the pod's pause process is PID 1 (with the path it would make a
new namespace, the container's init being PID 1). Capabilities Linux added in 5.8/5.9 (``CAP_PERFMON``, ``CAP_BPF``,
``CAP_CHECKPOINT_RESTORE``) are dropped from init and exec processes: runsc releases before 2023
refuse to start a process that names them ("unknown capability"), which is every privileged or
``ALL``-capabilities container containerd makes on a newer kernel, and gVisor implements none of
what they allow.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from kuasar_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.oci import namespace_path
from kuasar_shared.oci.pod import add_pod_mounts, sandbox_id_of
from kuasar_shared.oci.runtime import OciRuntime
from kuasar_shared.oci.task import OciHooks, Placement
from kuasar_shared.statefiles import CorruptState, read_json
from kuasar_shared.task.backend import CreateTask

from kuasar_quark_sandboxer.pause import CONTAINER_TYPE, SANDBOX_ID
from kuasar_quark_sandboxer.pod import RECORD_NAME, Pod, PodState
from kuasar_quark_sandboxer.sentrywait import sentry_wait

__all__ = ["RunscHooks", "UNSUPPORTED_CAPABILITIES"]

log = logging.getLogger(__name__)

#: capabilities runsc (before 2023) rejects; gVisor has no perf events, BPF or checkpoint/restore
UNSUPPORTED_CAPABILITIES = frozenset({"CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE"})


class RunscHooks(OciHooks):
    """Containers join the runsc sandbox of the pod recorded under ``pods_dir``."""

    name = "quark-task"
    init_pid_is_own = False
    stdio_at_start = True
    internal_exec_pids = True

    def __init__(self, pods_dir: str) -> None:
        self.pods_dir = pods_dir

    def _pod(self, sandbox_id: str) -> Pod:
        try:
            return Pod.from_json(read_json(os.path.join(self.pods_dir, sandbox_id, RECORD_NAME)))
        except FileNotFoundError:
            raise NotFound(f"sandbox {sandbox_id} not found") from None
        except (CorruptState, TypeError, ValueError) as err:
            raise FailedPrecondition(f"sandbox {sandbox_id}: unreadable record: {err}") from err

    def place(self, req: CreateTask, spec: dict[str, Any], namespace: str) -> Placement:
        sandbox_id = sandbox_id_of(spec, req.bundle)
        if not sandbox_id:
            raise InvalidArgument(f"container {req.id}: no pod named (annotation {SANDBOX_ID} or "
                                  f"<bundle>/sandbox); quark containers run inside their pod's sandbox")
        pod = self._pod(sandbox_id)
        if pod.state is not PodState.READY or not pod.runtime.binary:
            raise FailedPrecondition(f"container {req.id}: sandbox {sandbox_id} is {pod.state.value}, not ready")
        add_pod_mounts(spec, os.path.join(self.pods_dir, sandbox_id))
        self.adapt_process(spec.setdefault("process", {}))
        if namespace_path(spec, "pid"):
            spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns.get("type") != "pid"]
        annotations = spec.setdefault("annotations", {})
        annotations[CONTAINER_TYPE] = "container"
        annotations[SANDBOX_ID] = sandbox_id
        return Placement(sandbox_id=sandbox_id, binary=pod.runtime.binary, root=pod.runtime.root,
                         global_args=tuple(pod.runtime.global_args))

    async def wait_init(self, runtime: OciRuntime, container_id: str, sandbox_id: str) -> int:
        """Wait on the Sentry's control server from this process (:mod:`.sentrywait`): no ``runsc wait``
        process per container; a runsc without that server is waited for the old way."""
        try:
            return await sentry_wait(sandbox_id or container_id, container_id)
        except FileNotFoundError as err:
            log.debug("container %s: %s; using runsc wait", container_id, err)
            return await runtime.wait(container_id)

    def adapt_process(self, process: dict[str, Any]) -> None:
        capabilities = process.get("capabilities")
        if not isinstance(capabilities, dict):
            return
        for kind, names in capabilities.items():
            if isinstance(names, list):
                capabilities[kind] = [name for name in names if name not in UNSUPPORTED_CAPABILITIES]
