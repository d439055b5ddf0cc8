"""quark-task's backend (OciTaskBackend + RunscHooks) against real runsc pods: one kernel per pod,
shared volumes, exec, exit codes, kill, re-adoption, and a Sentry killed with SIGKILL."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest

from kuasar_shared.errors import FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.oci.task import UNKNOWN_EXIT, OciTaskBackend
from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.values import Stdio, TaskStatus
from kuasar_shared.task.backend import CreateTask, ExecProcess
from kuasar_shared.testing.oci import read_fifo

from kuasar_quark_sandboxer.hooks import RunscHooks
from kuasar_quark_sandboxer.sentrywait import exit_status, sentry_wait


def _cid() -> str:
    return "ctr-" + uuid.uuid4().hex[:10]


@pytest.fixture
async def backend(tmp_path, runsc_pods):
    task_backend = OciTaskBackend(str(tmp_path / "tasks"), RunscHooks(runsc_pods.directory))
    yield task_backend
    for container_id in list(task_backend._containers):
        await task_backend.shutdown(container_id, now=True)
    await task_backend.close()


async def test_two_containers_share_one_kernel_and_a_volume(tmp_path, backend, bundle_factory, pod, fifo) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    outs = {}
    for name, script in (("a", "uname -r; echo from-a > /vol/shared; cat /proc/version"),
                         ("b", "while [ ! -s /vol/shared ]; do sleep 0.1; done; uname -r; cat /vol/shared")):
        cid = _cid()
        bundle = bundle_factory(cid, ["sh", "-c", script], pod, mounts=(("/vol", str(volume)),))
        out = fifo(name + ".out")
        outs[name] = (cid, asyncio.ensure_future(read_fifo(out)))
        await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out)))
        await backend.start(cid, "")
    host_release = os.uname().release.encode()
    a_out, b_out = await outs["a"][1], await outs["b"][1]
    kernel = a_out.splitlines()[0]
    assert kernel != host_release and b_out.splitlines() == [kernel, b"from-a"]
    assert b"gVisor" in a_out or b"4.4.0" in a_out
    for cid, _ in outs.values():
        assert (await asyncio.wait_for(backend.wait(cid, ""), 20)).exit_status == 0
        await backend.delete(cid, "")


async def test_exec_exit_codes_kill_and_stats(backend, bundle_factory, pod, fifo) -> None:
    cid = _cid()
    pid = await backend.create(CreateTask(id=cid, bundle=bundle_factory(cid, ["sleep", "1000"], pod)))
    assert (await backend.state(cid, "")).status is TaskStatus.CREATED
    await backend.start(cid, "")
    assert (await backend.state(cid, "")).pid == pid
    assert len(await backend.pids(cid)) == 1

    out = fifo("exec.out")
    reader = asyncio.ensure_future(read_fifo(out))
    spec = {"args": ["sh", "-c", "echo in-exec; exit 3"], "cwd": "/", "env": ["PATH=/bin"],
            "user": {"uid": 0, "gid": 0}}
    await backend.exec(ExecProcess(id=cid, exec_id="e1", stdio=Stdio(stdout=out), spec=spec))
    await backend.start(cid, "e1")
    assert (await asyncio.wait_for(backend.wait(cid, "e1"), 20)).exit_status == 3
    assert (await reader).strip() == b"in-exec"
    await backend.delete(cid, "e1")

    await backend.exec(ExecProcess(id=cid, exec_id="e2", stdio=Stdio(), spec=dict(spec, args=["sleep", "100"])))
    await backend.start(cid, "e2")
    await backend.kill(cid, "e2", signal.SIGKILL, False)
    assert (await asyncio.wait_for(backend.wait(cid, "e2"), 20)).exit_status == 137
    assert (await backend.stats(cid)).memory_usage > 0

    await backend.kill(cid, "", signal.SIGTERM, False)
    assert (await asyncio.wait_for(backend.wait(cid, ""), 20)).exit_status == 128 + signal.SIGTERM
    info = await backend.delete(cid, "")
    assert info.exit_status == 128 + signal.SIGTERM
    with pytest.raises(NotFound):
        await backend.state(cid, "")


def _runsc_waits() -> list[str]:
    """Command lines of every live ``runsc ... wait`` process."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"runsc" and b"wait" in argv:
            found.append(b" ".join(argv).decode(errors="replace"))
    return found


async def test_exit_codes_come_from_the_sentry_without_a_process_per_container(backend, bundle_factory,
                                                                               pod) -> None:
    ids = {"seven": _cid(), "sleeper": _cid()}
    seven = bundle_factory(ids["seven"], ["sh", "-c", "sleep 1; exit 7"], pod)
    await backend.create(CreateTask(id=ids["seven"], bundle=seven))
    await backend.create(CreateTask(id=ids["sleeper"], bundle=bundle_factory(ids["sleeper"], ["sleep", "1000"], pod)))
    for cid in ids.values():
        await backend.start(cid, "")
    await asyncio.sleep(0.3)
    assert not [argv for argv in _runsc_waits() if any(cid in argv for cid in ids.values())]
    assert (await asyncio.wait_for(backend.wait(ids["seven"], ""), 20)).exit_status == 7
    await backend.kill(ids["sleeper"], "", signal.SIGKILL, False)
    assert (await asyncio.wait_for(backend.wait(ids["sleeper"], ""), 20)).exit_status == 137
    for cid in ids.values():
        await backend.delete(cid, "")


async def test_sentry_wait_statuses_and_a_sandbox_without_control_server() -> None:
    assert [exit_status(s) for s in (0, 7 << 8, 255 << 8, signal.SIGKILL, signal.SIGTERM | 0x80)] == [0, 7, 255, 137,
                                                                                                     143]
    with pytest.raises(FileNotFoundError):
        await sentry_wait("no-such-sandbox-" + uuid.uuid4().hex[:6], "ctr")


async def test_created_container_deleted_without_start(backend, bundle_factory, pod) -> None:
    cid = _cid()
    await backend.create(CreateTask(id=cid, bundle=bundle_factory(cid, ["sleep", "1000"], pod)))
    info = await asyncio.wait_for(backend.delete(cid, ""), 20)
    assert info.exit_status == 137


async def test_bad_input(tmp_path, backend, bundle_factory, pod, runsc_pods) -> None:
    bundle = bundle_factory("orphan", ["true"], "no-such-pod")
    with pytest.raises(NotFound):
        await backend.create(CreateTask(id=_cid(), bundle=bundle))
    with pytest.raises(InvalidArgument):
        await backend.create(CreateTask(id="../x", bundle=bundle))
    unnamed = bundle_factory("unnamed", ["true"], "")
    with pytest.raises(InvalidArgument):
        await backend.create(CreateTask(id=_cid(), bundle=unnamed))
    await runsc_pods.stop(pod, None)
    with pytest.raises(FailedPrecondition):
        await backend.create(CreateTask(id=_cid(), bundle=bundle_factory("late", ["true"], pod)))
    for call in (backend.state("nope", ""), backend.wait("nope", ""), backend.kill("nope", "", 9, False)):
        with pytest.raises(NotFound):
            await call


async def test_restart_readopts_and_sentry_kill_ends_waits(tmp_path, runsc_pods, bundle_factory, pod) -> None:
    state_dir = str(tmp_path / "tasks")
    first = OciTaskBackend(state_dir, RunscHooks(runsc_pods.directory))
    cid = _cid()
    await first.create(CreateTask(id=cid, bundle=bundle_factory(cid, ["sleep", "1000"], pod)))
    await first.start(cid, "")
    await first.close()  # the task server "dies": nothing is killed

    second = OciTaskBackend(state_dir, RunscHooks(runsc_pods.directory))
    await second.recover()
    try:
        assert (await second.state(cid, "")).status is TaskStatus.RUNNING
        waiter = asyncio.ensure_future(second.wait(cid, ""))
        pod_waiter = asyncio.ensure_future(runsc_pods.wait(pod))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        os.kill((await runsc_pods.status(pod)).pid, signal.SIGKILL)  # the Sentry
        assert (await asyncio.wait_for(waiter, 20)).exit_status == UNKNOWN_EXIT
        assert (await asyncio.wait_for(pod_waiter, 20)).exit_status == 255
        assert not (await runsc_pods.status(pod)).ready
        await second.delete(cid, "")
        await runsc_pods.shutdown(pod)
        assert not os.listdir(os.path.join(runsc_pods.directory, ".runsc"))
    finally:
        await second.close()


async def test_pod_dns_hostname_and_hosts_reach_the_container(tmp_path, runsc_pods, backend, bundle_factory,
                                                              fifo) -> None:
    """critest DNS config: the pod's files are bind-mounted into the gVisor container."""
    sandbox_id = "pod-" + uuid.uuid4().hex[:8]
    await runsc_pods.create(CreateSandbox(id=sandbox_id, config={
        "hostname": "quark-pod", "dns_config": {"servers": ["10.254.0.10"], "searches": ["svc.example"]}}))
    await runsc_pods.start(sandbox_id)
    cid = _cid()
    out = fifo("files.out")
    reader = asyncio.ensure_future(read_fifo(out))
    bundle = bundle_factory(cid, ["sh", "-c", "cat /etc/resolv.conf /etc/hostname /etc/hosts"], sandbox_id)
    await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out)))
    await backend.start(cid, "")
    with open("/etc/hosts") as handle:
        hosts = handle.read()
    assert (await reader).decode() == "search svc.example\nnameserver 10.254.0.10\nquark-pod\n" + hosts
    assert (await asyncio.wait_for(backend.wait(cid, ""), 20)).exit_status == 0
    await backend.delete(cid, "")


async def test_kill_of_an_exited_or_never_started_container(backend, bundle_factory, pod) -> None:
    """What containerd's StopContainer / task Delete (WithProcessKill) need (both were INTERNAL):
    NotFound for a process already gone, FailedPrecondition for one never started (its Wait only
    ends at Delete, so containerd must not wait for it)."""
    done, created = _cid(), _cid()
    await backend.create(CreateTask(id=done, bundle=bundle_factory(done, ["true"], pod)))
    await backend.start(done, "")
    assert (await asyncio.wait_for(backend.wait(done, ""), 20)).exit_status == 0
    await backend.create(CreateTask(id=created, bundle=bundle_factory(created, ["true"], pod)))
    with pytest.raises(NotFound):
        await backend.kill(done, "", signal.SIGKILL, True)
    with pytest.raises(FailedPrecondition):
        await backend.kill(created, "", signal.SIGKILL, True)
    for cid in (done, created):
        await asyncio.wait_for(backend.delete(cid, ""), 20)


async def test_capabilities_runsc_does_not_know_are_dropped(backend, bundle_factory, pod, fifo) -> None:
    """critest Privileged / adding ALL capabilities: containerd lists every capability of the host's
    kernel; runsc refused to start such a container ('unknown capability "CAP_PERFMON"')."""
    cid = _cid()
    bundle = bundle_factory(cid, ["sleep", "1000"], pod)
    spec_path = os.path.join(bundle, "config.json")
    with open(spec_path) as handle:
        spec = json.load(handle)
    every = spec["process"]["capabilities"]["bounding"] + ["CAP_SYS_ADMIN", "CAP_PERFMON", "CAP_BPF",
                                                          "CAP_CHECKPOINT_RESTORE"]
    spec["process"]["capabilities"] = {kind: list(every) for kind in ("bounding", "effective", "permitted")}
    with open(spec_path, "w") as handle:
        json.dump(spec, handle)
    await backend.create(CreateTask(id=cid, bundle=bundle))
    await backend.start(cid, "")
    with open(spec_path) as handle:
        capabilities = json.load(handle)["process"]["capabilities"]
    assert "CAP_SYS_ADMIN" in capabilities["effective"] and "CAP_PERFMON" not in capabilities["effective"]
    out = fifo("caps.out")
    reader = asyncio.ensure_future(read_fifo(out))
    exec_spec = {"args": ["sh", "-c", "grep CapEff /proc/self/status"], "cwd": "/", "env": ["PATH=/bin"],
                 "user": {"uid": 0, "gid": 0}, "capabilities": {k: list(every) for k in ("bounding", "effective")}}
    await backend.exec(ExecProcess(id=cid, exec_id="caps", stdio=Stdio(stdout=out), spec=exec_spec))
    await backend.start(cid, "caps")
    assert (await asyncio.wait_for(backend.wait(cid, "caps"), 20)).exit_status == 0
    assert b"CapEff" in await reader


async def test_shared_pid_pod_containers_see_the_pause_process_as_pid_1(runsc_pods, backend, bundle_factory, pod,
                                                                         fifo) -> None:
    """critest PodPID: containerd names the pod's PID namespace (/proc/<sandbox pid>/ns/pid); the
    container must run in it, not in a namespace of its own; without the path it keeps its own."""
    sandbox_pid = (await runsc_pods.status(pod)).pid
    outputs = {}
    for name, pid_ns in (("shared", {"type": "pid", "path": f"/proc/{sandbox_pid}/ns/pid"}), ("own", {"type": "pid"})):
        cid = _cid()
        bundle = bundle_factory(cid, ["cat", "/proc/1/cmdline"], pod)
        spec_path = os.path.join(bundle, "config.json")
        with open(spec_path) as handle:
            spec = json.load(handle)
        spec["linux"]["namespaces"] = [ns for ns in spec["linux"]["namespaces"] if ns["type"] != "pid"] + [pid_ns]
        with open(spec_path, "w") as handle:
            json.dump(spec, handle)
        out = fifo(name + ".out")
        reader = asyncio.ensure_future(read_fifo(out))
        await backend.create(CreateTask(id=cid, bundle=bundle, stdio=Stdio(stdout=out)))
        await backend.start(cid, "")
        outputs[name] = (await reader).rstrip(b"\0")
        assert (await asyncio.wait_for(backend.wait(cid, ""), 20)).exit_status == 0
        await backend.delete(cid, "")
    assert outputs == {"shared": b"/pause", "own": b"cat\0/proc/1/cmdline"}
