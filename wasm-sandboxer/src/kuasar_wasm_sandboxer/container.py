"""The per-container record the wasm task server keeps in memory and in ``<dir>/<id>.json``.

A record holds what a restarted task server needs to re-adopt a container: bundle, rootfs, the
cgroup it made, the init and exec runner pids with their start times (a pid alone may be reused),
states and exit statuses. Exit futures live only in memory and are rebuilt on adoption.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from kuasar_shared.task.records import ContainerRecord, ContainerStore, Proc

__all__ = ["Proc", "Container", "WasmContainerStore"]


@dataclass
class Container(ContainerRecord):
    """A wasm container: its record plus the cgroup the task server made for it."""

    cgroup: str = ""
    cgroup_owned_depth: int = 0


class WasmContainerStore(ContainerStore[Container]):
    """The records plus each container's run specs (what a runner process executes)."""

    def __init__(self, directory: str) -> None:
        super().__init__(directory, Container)

    def run_spec_path(self, container_id: str, exec_id: str) -> str:
        return os.path.join(self.work_dir(container_id), (exec_id or "init") + ".run")
