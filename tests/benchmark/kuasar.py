"""Our side: pods of one sandbox type through its sandboxer, driven by kuasar-ctl's Engine.

The Engine is the client library behind ``kuasar-ctl``: it makes the Sandbox API + Task API call
sequence containerd 2.x's CRI plugin makes (Controller Create/Start/Status, then task Create/
Connect/Start/State), with FIFO stdio copied in-process (``inline_logs``, as containerd does; the
CLI's per-container log-writer process would add ~0.2 s of Python start-up). Each pod runs one
``sleep`` container on the host network (like the baseline, which has no pod network either).

A sandbox type takes part when its console scripts are installed; :data:`PROFILES` names them and
the processes that form its management plane. Everything else found below the sandboxer or task
server (namespace holders, runsc sandboxes, QEMU) is per-pod infrastructure, reported apart.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import daemons
import floor
import procstats
from workload import SMOKE, Groups, Plan, Side

from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl.config import ContainerConfig
from kuasar_shared.ctl.clients import SandboxClient, TaskClient
from kuasar_shared.ctl.engine import Engine, EngineOptions

__all__ = ["Profile", "PROFILES", "SLEEP_WAT", "TOUCH64_WAT", "available_profiles", "KuasarSide", "pod_config",
           "tool"]

BIN = os.path.dirname(sys.executable)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: processes that are the workload or a transient runtime call, never management or infrastructure
_WORKLOAD_COMMS = ("sleep", "runc", "runc:[0:PARENT]", "runc:[1:CHILD]", "runc:[2:INIT]")


@dataclass(frozen=True)
class Profile:
    """How to benchmark one sandbox type."""

    sandbox_type: str
    sandboxer: str
    task_server: str
    image: str = "busybox"
    command: Tuple[str, ...] = ("/bin/sleep", "100000")
    plan: Plan = Plan()
    #: None: left out of the smoke run (CI's budget is 2 minutes)
    smoke: Optional[Plan] = SMOKE
    #: when set, the image is a directory made of these files (name -> text) instead of the busybox rootfs
    files: Tuple[Tuple[str, str], ...] = ()
    #: ``--config`` candidates, first existing wins (relative paths are in the repository); none: defaults
    configs: Tuple[str, ...] = ()
    #: the sandboxer's ``--log-level`` (warn keeps logging out of the numbers)
    log_level: str = "warn"
    #: seconds the Engine allows a Controller Create/Start/Stop/Shutdown call
    sandbox_deadline: float = 60.0
    #: a second configuration of the same sandbox type (side ``kuasar-<type>-<variant>``)
    variant: str = ""


#: a WASI module that sleeps 100000 s in poll_oneoff (subscription at 0, event at 64, count at 128)
SLEEP_WAT = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 100000000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"""

#: a module that touches 64 MiB of linear memory (one store per 4 KiB page), then sleeps like SLEEP_WAT
TOUCH64_WAT = """(module
  (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "_start") (local $a i32)
    (drop (memory.grow (i32.const 1024)))
    (local.set $a (i32.const 65536))
    (loop $touch
      (i32.store8 (local.get $a) (i32.const 1))
      (local.set $a (i32.add (local.get $a) (i32.const 4096)))
      (br_if $touch (i32.lt_u (local.get $a) (i32.const 67174400))))
    (i32.store (i32.const 16) (i32.const 1))
    (i64.store (i32.const 24) (i64.const 100000000000000))
    (drop (call $poll (i32.const 0) (i32.const 64) (i32.const 1) (i32.const 128)))))
"""

PROFILES: Dict[str, Profile] = {
    "runc": Profile("runc", "runc-sandboxer", "runc-task"),
    "wasm": Profile("wasm", "wasm-sandboxer", "wasm-task", image="wasm-sleep", command=("/sleep.wat",),
                    files=(("sleep.wat", SLEEP_WAT),), plan=Plan(serial=50, pods=(1, 5, 10, 20, 50))),
    "quark": Profile("quark", "quark-sandboxer", "quark-task", plan=Plan(serial=30, parallel=(10, 20),
                                                                      pods=(1, 5, 10, 20))),
    # QEMU under TCG: seconds per boot and ~225 MiB per VM, so small N on a 2-core machine; the parallel
    # batch is bench_vmm's own informational phase. The sandboxer logs its start timings at info.
    "vmm": Profile("vmm", "vmm-sandboxer", "vmm-task-relay", smoke=None, log_level="info", sandbox_deadline=300.0,
                   plan=Plan(serial=5, parallel=(), pods=(1, 3, 5), warmup=1)),
    # the same with template = "auto" (issue 18): the warm-up start makes the template, the rest restore
    "vmm-template": Profile("vmm", "vmm-sandboxer", "vmm-task-relay", smoke=None, log_level="info",
                            sandbox_deadline=300.0, plan=Plan(serial=10, parallel=(), pods=(1, 3, 5), warmup=1),
                            variant="template"),
    # the same with a pool of warm VMs restored from the template (template_pool = 2)
    "vmm-pool": Profile("vmm", "vmm-sandboxer", "vmm-task-relay", smoke=None, log_level="info",
                        sandbox_deadline=300.0, plan=Plan(serial=10, parallel=(), pods=(1, 3, 5), warmup=1),
                        variant="pool"),
}


def tool(name: str) -> Optional[str]:
    """A console script from our environment, else from the repository's .venv (hack/setup.sh
    installs every package there), else from PATH."""
    for directory in (BIN, os.path.join(REPO, ".venv", "bin")):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    return shutil.which(name)


def available_profiles() -> List[Profile]:
    return [p for p in PROFILES.values() if tool(p.sandboxer) and tool(p.task_server)]


def pod_config(index: int, log_dir: str, cgroup_parent: str) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig()
    config.metadata.name = f"bench-{index}"
    config.metadata.namespace = "bench"
    config.metadata.uid = f"uid-{index}"
    config.hostname = f"bench-{index}"
    config.log_directory = log_dir
    config.linux.cgroup_parent = cgroup_parent
    ns = config.linux.security_context.namespace_options
    ns.network, ns.pid = 2, 1  # NODE network, CONTAINER pid
    return config


#: the steps issue 19 sets targets for: the pod's Sandbox API calls and the container's task calls, as timed
#: on the client (socket round trips included, the Engine's own work excluded)
SANDBOX_STEP = "of which Sandbox API Create + Start"
TASK_STEP = "of which task Create + Start"


class _TimedSandboxClient(SandboxClient):
    def __init__(self, endpoint: str, sandboxer: str, hint: Any, sink: Dict[str, float]) -> None:
        super().__init__(endpoint, sandboxer, hint)
        self.sink = sink

    async def call(self, method: str, request: Any, timeout: Optional[float] = 30.0) -> Any:
        t0 = time.perf_counter()
        try:
            return await super().call(method, request, timeout)
        finally:
            if method in ("Create", "Start"):
                self.sink[SANDBOX_STEP] = self.sink.get(SANDBOX_STEP, 0.0) + (time.perf_counter() - t0) * 1000


class _TimedTaskClient(TaskClient):
    def __init__(self, address: str, sink: Dict[str, float]) -> None:
        super().__init__(address)
        self.sink = sink

    async def call(self, method: str, request: Any, response_type: Any, timeout: Optional[float] = 30.0) -> Any:
        t0 = time.perf_counter()
        try:
            return await super().call(method, request, response_type, timeout)
        finally:
            if method in ("Create", "Start"):
                self.sink[TASK_STEP] = self.sink.get(TASK_STEP, 0.0) + (time.perf_counter() - t0) * 1000


class CallTimedEngine(Engine):
    """The Engine, summing the duration of the Sandbox API and task Create + Start calls in :attr:`calls`
    (serial starts only: parallel ones would mix)."""

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self.calls: Dict[str, float] = {}
        self.sandbox = _TimedSandboxClient(options.endpoint, options.sandboxer, options.hint, self.calls)

    def task(self, address: str) -> TaskClient:
        if address not in self._tasks:
            self._tasks[address] = _TimedTaskClient(address, self.calls)
        return self._tasks[address]


class KuasarSide(Side):
    """One sandboxer (and its task server) in a private directory, with an Engine session."""

    #: the client library driving the pods (a side may time its calls in a subclass)
    engine_type: type = CallTimedEngine

    def __init__(self, profile: Profile, work: str, images: str) -> None:
        self.profile = profile
        self.name = f"kuasar-{profile.sandbox_type}" + (f"-{profile.variant}" if profile.variant else "")
        self.work = work
        self.images = images
        self.listen = os.path.join(work, f"{profile.sandbox_type}.sock")
        self.state = os.path.join(work, "s")
        self.cgroup_parent = f"/kuasar-bench-{profile.sandbox_type}"
        self.proc: Optional[subprocess.Popen] = None
        self.engine: Optional[Engine] = None
        self._log: Any = None
        self._counter = 0
        self._pods: Dict[str, api_pb2.PodSandboxConfig] = {}
        self._ctr = ContainerConfig(name="sleeper", image=profile.image, command=tuple(profile.command),
                                    log_path="sleeper.log")

    def _make_image(self) -> None:
        image = os.path.join(self.work, "images", self.profile.image)
        os.makedirs(image, exist_ok=True)
        for name, text in self.profile.files:
            with open(os.path.join(image, name), "w") as f:
                f.write(text)
        self._ctr = dataclasses.replace(self._ctr, image=image)

    async def setup(self) -> None:
        os.makedirs(self.work, exist_ok=True)
        if self.profile.files:
            self._make_image()
        self._log = open(os.path.join(self.work, "sandboxer.log"), "wb")
        sandboxer = tool(self.profile.sandboxer)
        assert sandboxer is not None
        argv = [sandboxer, "--listen", self.listen, "--dir", self.state, "--log-level", self.profile.log_level]
        config = self.sandboxer_config()
        if config:
            argv += ["--config", config]
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(600):
            if os.path.exists(self.listen):
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.profile.sandboxer} exited; see {self._log.name}")
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError(f"{self.profile.sandboxer} did not listen within 30 s; see {self._log.name}")
        options = EngineOptions(self.profile.sandbox_type, self.listen, os.path.join(self.work, "ctl"), self.images,
                                inline_logs=True, sandbox_deadline=self.profile.sandbox_deadline)
        self.engine = self.engine_type(options)

    def sandboxer_config(self) -> Optional[str]:
        """The sandboxer's ``--config``: the first existing candidate of the profile, else none."""
        return next((c for c in (os.path.join(REPO, p) for p in self.profile.configs) if os.path.exists(c)), None)

    def versions(self) -> Dict[str, str]:
        out = subprocess.run([tool(self.profile.sandboxer) or "", "--version"], capture_output=True, text=True)
        return {self.profile.sandboxer: (out.stdout or out.stderr).strip()}

    def diagnostics(self) -> str:
        return daemons.log_tail(self._log, 4000)

    async def start_pod(self) -> str:
        assert self.engine is not None
        self._counter += 1
        config = pod_config(self._counter, os.path.join(self.work, "logs"), self.cgroup_parent)
        if isinstance(self.engine, CallTimedEngine):
            self.engine.calls.clear()
        t0 = time.perf_counter()
        pod = await self.engine.run_pod(config)
        self._pods[pod] = config
        t1 = time.perf_counter()
        ctr = await self.engine.create_container(pod, self._ctr, config)
        self.last_container = ctr
        t2 = time.perf_counter()
        await self.engine.start_container(ctr)
        t3 = time.perf_counter()
        self.last_steps = {"run pod (Sandbox API)": (t1 - t0) * 1000, "create container (spec, IO)": (t2 - t1) * 1000,
                           "start container (Task API)": (t3 - t2) * 1000}
        if isinstance(self.engine, CallTimedEngine):
            self.last_steps.update(self.engine.calls)
        return pod

    async def remove_pods(self, pods: Sequence[str]) -> None:
        assert self.engine is not None
        for pod in pods:
            await self.engine.stop_pod(pod)
            await self.engine.remove_pod(pod)
            self._pods.pop(pod, None)

    def _task_servers(self) -> List[int]:
        """Processes named by the profile's task server whose command line names our dir, and the recorded
        task server (the first one is a fork of the sandboxer: its name is set, its command line is the
        sandboxer's)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                argv = procstats.cmdline(int(entry))
                if any(self.profile.task_server in a for a in argv[:2]) and any(self.state in a for a in argv):
                    found.append(int(entry))
        try:
            with open(os.path.join(self.state, "task-server.json")) as handle:
                pid = int(json.load(handle)["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return found
        if pid not in found and procstats.comm(pid) == self.profile.task_server[:15]:
            found.append(pid)
        return found

    def _task_front(self) -> List[int]:
        """The task front the sandboxer records beside its task server (it owns the engine's connections)."""
        try:
            with open(os.path.join(self.state, "task-server.json")) as handle:
                pid = int(json.load(handle)["front"]["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
        return [pid] if any("taskfront" in a for a in procstats.cmdline(pid)) else []

    def groups(self) -> Groups:
        groups = Groups()
        if self.proc is None:
            return groups
        tree = procstats.children_map()
        tasks, front = self._task_servers(), self._task_front()
        groups.management = {self.profile.sandboxer: [self.proc.pid], self.profile.task_server: tasks,
                             "task front": front}
        per_pod: List[int] = []
        for pid in procstats.descendants(self.proc.pid, tree) + [d for t in tasks for d in
                                                                  procstats.descendants(t, tree)]:
            if pid in tasks or pid in front:
                continue
            name = procstats.comm(pid)
            if name == "sandbox-parent":
                groups.management.setdefault("sandbox-parent", []).append(pid)
            elif name and name not in _WORKLOAD_COMMS:
                per_pod.append(pid)
        # a process below both the sandboxer and the task server (a wasm runner) is counted once
        groups.per_pod = {"pod processes": list(dict.fromkeys(per_pod))}
        return groups

    async def after_measure(self, result: Dict[str, Any]) -> None:
        """The floor: one pod running, where each management process's memory goes (smaps by
        mapping, and what importing its program costs a fresh interpreter)."""
        pod = await self.start_pod()
        try:
            await asyncio.sleep(1.0)
            groups = self.groups().management
            result["floor"] = {
                "pss_kb": procstats.memory_sum([pid for pids in groups.values() for pid in pids]).pss_kb,
                "processes": {name if index == 0 else f"{name} ({index + 1})": floor.process_memory(pid)
                              for name, pids in groups.items() for index, pid in enumerate(pids)},
                "imports": {name: floor.import_profile(floor.PROGRAMS[name]) for name in groups
                            if name in floor.PROGRAMS}}
        finally:
            await self.remove_pods([pod])

    async def teardown(self) -> None:
        if self.engine is not None:
            try:
                await self.remove_pods(list(self._pods))
            finally:
                await self.engine.__aexit__(None, None, None)
        tasks = self._task_servers() + self._task_front()
        if self.proc is not None:
            await daemons.terminate(self.proc)
        for pid in tasks:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for _ in range(200):
            if all(procstats.is_zombie(pid) for pid in tasks):
                break
            await asyncio.sleep(0.05)
        if self._log is not None:
            self._log.close()
