"""A task server with a backend that runs nothing, started as ``python toy_task_server.py <args>``.

It is the shared task server (:func:`kuasar_shared.task.main.run_task_server`) with a backend of no
sandbox type, so that the server's main and the sandboxer's supervision of it are tested here, in
kuasar_shared's own tests. Every container call answers NOT_FOUND or UNIMPLEMENTED.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from kuasar_shared.errors import NotFound, Unimplemented
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.backend import CreateTask
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.main import run_task_server
from kuasar_shared.task.recorded import RecordedTaskBackend
from kuasar_shared.task.records import ContainerRecord, ContainerStore, Proc
from kuasar_shared.values import CgroupStats


class ToyTaskBackend(RecordedTaskBackend[ContainerRecord]):
    async def create(self, req: CreateTask) -> int:
        raise Unimplemented(f"container {req.id}: the toy task server runs nothing")

    async def start(self, id: str, exec_id: str) -> int:
        self._get(id)
        raise Unimplemented("the toy task server runs nothing")

    async def kill(self, id: str, exec_id: str, signal: int, all: bool) -> None:
        self._get(id)

    async def pids(self, id: str) -> list[int]:
        self._get(id)
        return []

    async def stats(self, id: str) -> CgroupStats:
        self._get(id)
        raise NotFound(f"container {id} has no statistics")

    async def _remove(self, container: ContainerRecord) -> None:
        self.store.remove(container.id)

    async def _kill_all(self, container: ContainerRecord) -> None:
        """Nothing runs."""

    async def _await_killed(self, container: ContainerRecord) -> None:
        """Nothing runs."""

    def _readopt(self, container: ContainerRecord, proc: Proc, alive: bool) -> None:
        """Nothing ran."""


async def _open_backend(args: argparse.Namespace, hub: StreamingHub,
                        exits: Optional[ExitRecorder]) -> ToyTaskBackend:
    backend = ToyTaskBackend(ContainerStore(args.dir, ContainerRecord), hub=hub, exits=exits)
    await backend.recover()
    return backend


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_task_server("toy-task", "0.0.1", argv, listen="/run/kuasar-toy/task.sock",
                           directory="/run/kuasar-toy/tasks", pods_dir="", pods_dir_help="the sandboxer's --dir",
                           description="a task server that runs nothing", open_backend=_open_backend)


if __name__ == "__main__":
    sys.exit(main())
