"""RuncTaskBackend: the Task API for every runc pod, driving the real ``runc`` binary.

All of the container, process, exit and persistence logic is :class:`kuasar_shared.oci.task.OciTaskBackend`;
this module only says how runc containers join their pod: the spec's ``/proc/<pid>/ns/...`` paths
point at the namespaces runc-sandboxer pinned (:mod:`.podns`), a spec without ``cgroupsPath`` goes
below the pod's cgroup parent, the pod's ``hostname``, ``hosts``, ``resolv.conf`` and ``/dev/shm``
are mounted in, and ``hostname`` is dropped when the UTS namespace is shared. runc is
invoked with ``--root <root>/<engine namespace>`` and the binary from the runc options, if any.
"""
from __future__ import annotations

import os
from typing import Any, Optional

from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.oci import drop_hostname_if_shared_uts, set_cgroups_path
from kuasar_shared.oci.pod import add_pod_mounts
from kuasar_shared.oci.task import OciHooks, OciTaskBackend, Placement
from kuasar_shared.task.backend import CreateTask

from kuasar_runc_task.podns import default_cgroups_path, join_pod_namespaces, sandbox_id_of

__all__ = ["RuncHooks", "RuncTaskBackend"]


class RuncHooks(OciHooks):
    """runc containers join the namespaces their pod pinned under ``<pods_dir>/<pod id>/ns``.

    Args:
        pods_dir: the sandboxer's ``--dir``; binary: default runtime binary; runtime_root:
        default ``--root`` (a sub-directory per engine namespace is used).
    """

    name = "runc-task"
    terminals = True

    def __init__(self, pods_dir: str, binary: str, runtime_root: str) -> None:
        self.pods_dir = pods_dir
        self.binary = binary
        self.runtime_root = runtime_root

    def place(self, req: CreateTask, spec: dict[str, Any], namespace: str) -> Placement:
        sandbox_id = sandbox_id_of(spec, req.bundle)
        join_pod_namespaces(spec, self.pods_dir, sandbox_id)
        if self.pods_dir and sandbox_id:
            add_pod_mounts(spec, os.path.join(self.pods_dir, sandbox_id))
        cgroups_path = default_cgroups_path(spec, self.pods_dir, sandbox_id, req.id)
        if cgroups_path:
            set_cgroups_path(spec, cgroups_path)
        drop_hostname_if_shared_uts(spec)
        root = os.path.join(str(req.options.get("root") or self.runtime_root), namespace)
        return Placement(sandbox_id=sandbox_id, binary=str(req.options.get("binary_name") or self.binary),
                         root=root)


class RuncTaskBackend(OciTaskBackend):
    """Containers of every runc pod.

    Args:
        directory: where container records (``<id>.json``) and work files live.
        pods_dir: the sandboxer's ``--dir``, holding ``<pod id>/ns/<type>`` pinned namespaces.
        binary: default OCI runtime binary; ``runtime_root``: default ``--root`` (per namespace).
        hub: the Streaming service of this server, for ``io_type = "streaming"`` stdio.
        exits: where the sandboxer records exits of processes orphaned by a dead task server.
    """

    def __init__(self, directory: str, pods_dir: str = "", binary: str = "runc",
                 runtime_root: str = "", hub: Optional[StreamingHub] = None,
                 exits: Optional[ExitRecorder] = None) -> None:
        hooks = RuncHooks(pods_dir, binary, runtime_root or os.path.join(directory, ".runc"))
        super().__init__(directory, hooks, hub=hub, exits=exits)
