"""Where each millisecond of a serial runc pod start goes, step by step, next to bare ``runc``.

The Engine workload (:mod:`workload`) times what containerd sees: Sandbox API Create + Start, task
Create, task Start, each through a socket. This module runs the same code in this process, with no
socket in between, so that each step can be timed on its own: the sandboxer's :class:`RuncSandboxer`
(a real ``[sandbox-parent]`` helper and task server) for the pod, and a :class:`RuncTaskBackend` on the
same ``--dir`` for the container. Steps are timed by wrapping the functions that do them (state writes
with their fsyncs, the holder spawn, the namespace bind mounts, the pod files and ``/dev/shm``, the
cgroup, the rootfs mount, IO set-up, ``runc create``, ``runc start``); what no wrapper covers is
reported as "other (Python)". The same container spec, placed by runc-task, is then run with bare
``runc create && runc start`` (rootfs mounted beforehand, stdio on /dev/null) for comparison.
Subtracting the in-process total from the Engine workload's step gives the engine round trips
(ttrpc/gRPC, the task front, the other process's event loop).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import time
import sys
import uuid
from typing import Any, Awaitable, Callable, Dict, List

import procstats

from kuasar_shared import process
from kuasar_shared.ctl import host
from kuasar_shared.ctl.config import ContainerConfig
from kuasar_shared.ctl.spec import SpecInputs, build_container_spec
from kuasar_shared.mounts import mount, unmount_recursive
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_shared.task.backend import CreateTask, Mount, Stdio

__all__ = ["Runner", "StepTimer", "bare_runc", "remove_bare", "measure_steps", "main"]


class StepTimer:
    """Wraps functions so that each call adds its wall time to a named step of the current round."""

    def __init__(self) -> None:
        self.current: Dict[str, float] = {}
        self.counts: Dict[str, int] = {}
        self._undo: List[Callable[[], None]] = []

    def _add(self, step: str, seconds: float) -> None:
        self.current[step] = self.current.get(step, 0.0) + seconds * 1000
        self.counts[step] = self.counts.get(step, 0) + 1

    def wrap(self, owner: Any, attr: str, step: str, static: bool = False) -> None:
        original = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        function = original.__func__ if isinstance(original, staticmethod) else original
        if asyncio.iscoroutinefunction(function):
            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self._add(step, time.perf_counter() - t0)
            wrapper: Any = timed_async
        else:
            @functools.wraps(function)
            def timed(*args: Any, **kwargs: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self._add(step, time.perf_counter() - t0)
            wrapper = timed
        setattr(owner, attr, staticmethod(wrapper) if static or isinstance(original, staticmethod) else wrapper)
        self._undo.append(lambda: setattr(owner, attr, original))

    def take(self) -> Dict[str, float]:
        taken, self.current = self.current, {}
        return taken

    def restore(self) -> None:
        while self._undo:
            self._undo.pop()()


def _wrap_runc_path(timer: StepTimer) -> None:
    """Every step of a runc pod start that is worth its own line."""
    import kuasar_runc_sandboxer.sandboxer as sandboxer_module
    from kuasar_runc_sandboxer.holder import HolderParent
    import kuasar_shared.oci.task as task_module
    from kuasar_shared.oci.runtime import OciRuntime
    from kuasar_shared.sandbox.pods import PodTable
    import kuasar_shared.statefiles as store_module
    import kuasar_shared.task.records as container_module

    timer.wrap(os, "fsync", "fsync (inside the state writes)")
    timer.wrap(store_module, "write_json_atomic", "pod state writes")
    timer.wrap(container_module, "write_json_atomic", "container state writes")
    timer.wrap(sandboxer_module, "write_pod_files", "pod files (hostname, hosts, resolv.conf)")
    timer.wrap(sandboxer_module, "mount_pod_shm", "pod /dev/shm mount")
    timer.wrap(sandboxer_module, "bind_namespaces", "namespace pinning (bind mounts)")
    timer.wrap(HolderParent, "spawn", "holder spawn (round trip to the sandbox-parent helper)")
    timer.wrap(PodTable, "create_cgroup", "pod cgroup")
    timer.wrap(task_module, "mount_all", "rootfs mount")
    timer.wrap(task_module, "open_process_io", "IO set-up")
    timer.wrap(task_module, "load_spec", "spec read")
    timer.wrap(task_module, "save_spec", "spec write")
    timer.wrap(OciRuntime, "create", "runc create")
    timer.wrap(OciRuntime, "start", "runc start")


def _container_spec(index: int, sandbox_id: str, holder_pid: int, cgroup_parent: str) -> Dict[str, Any]:
    import kuasar
    config = kuasar.pod_config(index, "/tmp", cgroup_parent)
    ctr = ContainerConfig(name="sleeper", image="busybox", command=("/bin/sleep", "100000"), log_path="sleeper.log")
    inputs = SpecInputs(container_id=f"steps-c{index}", sandbox_id=sandbox_id, sandbox_pid=holder_pid,
                        image_name="busybox", oom_score_adj_floor=host.own_oom_score_adj(),
                        swap_accounting=host.swap_accounting())
    return build_container_spec(ctr, config, inputs)


#: runs argv with stdio on /dev/null and returns its exit status: kuasar_shared.process in this program (a
#: child subreaper that reaps every child), asyncio's own subprocesses in a driver that must not reap them
Runner = Callable[[List[str]], Awaitable[int]]


async def _run_reaped(argv: List[str]) -> int:
    return (await process.run(argv, stdout=process.DEVNULL, stderr=process.DEVNULL, check=False)).returncode


async def bare_runc(bundle: str, spec: Dict[str, Any], lower: str, root: str, cid: str,
                    runner: Runner = _run_reaped) -> Dict[str, float]:
    """``runc create && runc start`` of ``spec`` in ``bundle`` (rootfs mounted first, not timed)."""
    os.makedirs(os.path.join(bundle, "rootfs"))
    for sub in ("upper", "work"):
        os.makedirs(os.path.join(bundle, sub))
    mount("overlay", os.path.join(bundle, "rootfs"), "overlay",
          host.overlay_options(lower, os.path.join(bundle, "upper"), os.path.join(bundle, "work")))
    spec = json.loads(json.dumps(spec))
    spec["root"] = {"path": "rootfs"}
    spec["linux"]["cgroupsPath"] = spec["linux"]["cgroupsPath"].rstrip("/") + "-bare"
    spec["process"]["terminal"] = False
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    steps = {}
    for action, argv in (("bare runc create", ["create", "--bundle", bundle, "--pid-file",
                                               os.path.join(bundle, "pid"), cid]), ("bare runc start", ["start", cid])):
        t0 = time.perf_counter()
        # the container inherits runc's stdio: a pipe would never reach EOF
        status = await runner(["runc", "--root", root, "--log", os.path.join(bundle, "log.json"), *argv])
        steps[action] = (time.perf_counter() - t0) * 1000
        if status:
            with open(os.path.join(bundle, "log.json")) as log:
                raise RuntimeError(f"runc {argv[0]} exited {status}: {log.read()[-500:]}")
    return steps


async def remove_bare(root: str, cid: str, bundle: str, runner: Runner = _run_reaped) -> None:
    await runner(["runc", "--root", root, "delete", "--force", cid])
    unmount_recursive(os.path.join(bundle, "rootfs"))


async def measure_steps(work: str, images: str, rounds: int) -> Dict[str, Any]:
    """``rounds`` serial pod + container starts in this process, each step timed; then bare runc.

    Needs root and a child-subreaper process (run.py is one); removes every pod, container, mount and
    cgroup it made.
    """
    from kuasar_runc_sandboxer.holder import HolderParent
    from kuasar_runc_sandboxer.sandboxer import RUNC_TASK, RuncSandboxer
    from kuasar_runc_task.backend import RuncTaskBackend

    state = os.path.join(work, "s")
    os.makedirs(state, exist_ok=True)
    holders = HolderParent.fork()
    task_server = await TaskServer.ensure(state, RUNC_TASK, log_level="warn")
    sandboxer = RuncSandboxer(state, holders, task_server)
    backend = RuncTaskBackend(os.path.join(work, "tasks"), pods_dir=state, runtime_root=os.path.join(work, "runc"))
    timer = StepTimer()
    _wrap_runc_path(timer)
    lower = os.path.join(images, "busybox")
    cgroup_parent = "/kuasar-bench-steps"
    rows: List[Dict[str, float]] = []
    pods: List[str] = []
    containers: List[str] = []
    bare: List[tuple[str, str]] = []
    try:
        for index in range(rounds):
            sandbox_id = uuid.uuid4().hex
            row: Dict[str, float] = {}
            t0 = time.perf_counter()
            await sandboxer.create(CreateSandbox(id=sandbox_id, config={
                "hostname": f"steps-{index}", "linux": {"cgroup_parent": cgroup_parent, "security_context": {
                    "namespace_options": {"network": "NODE", "pid": "CONTAINER", "ipc": "POD"}}}}))
            pods.append(sandbox_id)
            status = await sandboxer.start(sandbox_id)
            row["pod total (Sandbox API Create + Start, in process)"] = (time.perf_counter() - t0) * 1000
            row.update({"pod: " + k: v for k, v in timer.take().items()})
            bundle = os.path.join(work, "bundles", sandbox_id)
            os.makedirs(os.path.join(bundle, "rootfs"))
            spec = _container_spec(index, sandbox_id, status.pid, cgroup_parent)
            with open(os.path.join(bundle, "config.json"), "w") as handle:
                json.dump(spec, handle)
            upper = os.path.join(work, "upper", sandbox_id)
            os.makedirs(os.path.join(upper, "fs"))
            os.makedirs(os.path.join(upper, "work"))
            rootfs = (Mount(type="overlay", source="overlay", options=tuple(host.overlay_options(
                lower, os.path.join(upper, "fs"), os.path.join(upper, "work")))),)
            cid = "steps-c" + sandbox_id[:12]
            t1 = time.perf_counter()
            await backend.create(CreateTask(id=cid, bundle=bundle, rootfs=rootfs, namespace="kuasar-bench",
                                            stdio=Stdio()))
            await backend.start(cid, "")
            row["container total (task Create + Start, in process)"] = (time.perf_counter() - t1) * 1000
            containers.append(cid)
            row.update({"container: " + k: v for k, v in timer.take().items()})
            with open(os.path.join(bundle, "config.json")) as handle:
                placed = json.load(handle)
            bare_bundle = os.path.join(work, "bare", sandbox_id)
            bare_id = "bare-" + sandbox_id[:12]
            bare.append((bare_id, bare_bundle))
            row.update(await bare_runc(bare_bundle, placed, lower, os.path.join(work, "bare-root"), bare_id))
            rows.append(row)
    finally:
        timer.restore()
        for bare_id, bare_bundle in bare:
            await remove_bare(os.path.join(work, "bare-root"), bare_id, bare_bundle)
        for cid in containers:
            with contextlib.suppress(Exception):
                await backend.kill(cid, "", signal.SIGKILL, True)
                await asyncio.wait_for(backend.wait(cid, ""), 10)
                await backend.delete(cid, "")
        await backend.close()
        for sandbox_id in pods:
            with contextlib.suppress(Exception):
                await sandboxer.shutdown(sandbox_id)
        await sandboxer.close()
        holders.close()
        for pid in (task_server.pid, task_server.front_pid):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        procstats.reap_zombie_children()
        shutil.rmtree(os.path.join(work, "upper"), ignore_errors=True)
    return _summary(rows)


def _summary(rows: List[Dict[str, float]]) -> Dict[str, Any]:
    steps = sorted({k for row in rows for k in row}, key=lambda k: (k.split(":")[0], k))
    p50 = {k: procstats.percentile([row.get(k, 0.0) for row in rows], 50) for k in steps}
    for scope, total in (("pod", "pod total (Sandbox API Create + Start, in process)"),
                         ("container", "container total (task Create + Start, in process)")):
        covered = [k for k in steps if k.startswith(scope + ": ") and "fsync" not in k]
        other = [row.get(total, 0.0) - sum(row.get(k, 0.0) for k in covered) for row in rows]
        p50[f"{scope}: other (Python)"] = procstats.percentile(other, 50)
    bare = [row.get("bare runc create", 0.0) + row.get("bare runc start", 0.0) for row in rows]
    p50["bare runc create + start"] = procstats.percentile(bare, 50)
    return {"rounds": len(rows), "p50_ms": p50, "samples_ms": rows}


def main(argv: List[str]) -> int:
    """``startsteps.py --work DIR --images DIR --rounds N``: the JSON summary on stdout.

    A process of its own: it becomes a child subreaper and reaps every child (as runc-task does),
    which the benchmark driver, waiting for its own children, must not.
    """
    from kuasar_shared.daemon.reaper import set_child_subreaper
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", required=True)
    parser.add_argument("--images", required=True, help="directory holding the busybox rootfs")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args(argv)
    set_child_subreaper(True)
    json.dump(asyncio.run(measure_steps(args.work, args.images, args.rounds)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.exit(main(sys.argv[1:]))
