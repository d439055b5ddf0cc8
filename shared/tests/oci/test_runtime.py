"""OciRuntime against the real runc binary."""
from __future__ import annotations

import json
import os
import signal

import pytest

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, Internal, NotFound
from kuasar_shared.process_identity import wait_exit
from kuasar_shared.oci import OciRuntime, StdioFds, error_from_output


def test_error_from_output_reads_last_json_error_line() -> None:
    log = "\n".join([
        json.dumps({"level": "warning", "msg": "something minor"}),
        json.dumps({"level": "error", "msg": "container does not exist"}),
    ])
    err = error_from_output("state", "c1", log, 1)
    assert isinstance(err, NotFound)
    assert "container does not exist" in str(err) and "c1" in str(err)
    assert isinstance(error_from_output("kill", "c1", '{"level":"error","msg":"container not running"}', 1),
                      FailedPrecondition)
    assert isinstance(error_from_output("x", "c1", "", 2), Internal)
    assert "exit status 2" in str(error_from_output("x", "c1", "", 2))
    # runsc's words for a process already gone and for a container never started
    runsc_gone = 'signaling container "c1": signaling process in container "c1" PID 0: no such process'
    assert isinstance(error_from_output("kill", "c1", runsc_gone, 1), NotFound)
    assert isinstance(error_from_output("kill", "c1", 'cannot signal container "c1" in state created', 1),
                      FailedPrecondition)
    # runc's words for a kill racing the exit of the init (critest "attach": StopContainer after the shell
    # exited must not fail with INTERNAL)
    runc_gone = '{"level":"error","msg":"unable to signal init: os: process already finished"}'
    assert isinstance(error_from_output("kill", "c1", runc_gone, 1), NotFound)


@pytest.mark.asyncio
async def test_unknown_container_is_not_found(runtime_root: str) -> None:
    runtime = OciRuntime("runc", runtime_root)
    with pytest.raises(NotFound, match="does not exist"):
        await runtime.state("no-such-container")
    with pytest.raises(NotFound):
        await runtime.kill("no-such-container", signal.SIGKILL)


@pytest.mark.asyncio
async def test_lifecycle_with_output_exec_and_errors(bundle_factory, runtime_root: str, cid: str,
                                                     tmp_path) -> None:
    bundle, _ = bundle_factory("bundle", ["sh", "-c", "echo started; exec sleep 1000"])
    runtime = OciRuntime("runc", runtime_root)
    out_path = str(tmp_path / "out.txt")
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        pid = await runtime.create(cid, bundle, str(tmp_path / "init.pid"), StdioFds(stdout=out, stderr=out))
    finally:
        os.close(out)
    assert pid > 0
    assert (await runtime.state(cid))["status"] == "created"
    with pytest.raises(AlreadyExists):
        await runtime.create(cid, bundle, str(tmp_path / "again.pid"))
    await runtime.start(cid)
    state = await runtime.state(cid)
    assert state["status"] == "running" and state["pid"] == pid
    assert await runtime.ps(cid) == [pid]

    process = {"args": ["sh", "-c", "echo exec-out"], "cwd": "/", "env": ["PATH=/bin"],
               "user": {"uid": 0, "gid": 0}}
    process_path = str(tmp_path / "process.json")
    with open(process_path, "w") as handle:
        json.dump(process, handle)
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND)
    try:
        exec_pid = await runtime.exec(cid, process_path, str(tmp_path / "exec.pid"), str(tmp_path / "exec.log"),
                                      StdioFds(stdout=out))
    finally:
        os.close(out)
    assert exec_pid > 0
    await wait_exit(exec_pid)

    stats = await runtime.stats(cid)
    assert stats["memory"]["usage"]["usage"] > 0
    await runtime.update(cid, {"memory": {"limit": 64 << 20}})
    await runtime.pause(cid)
    assert (await runtime.state(cid))["status"] == "paused"
    await runtime.resume(cid)

    with pytest.raises(FailedPrecondition):
        await runtime.delete(cid)
    await runtime.kill(cid, signal.SIGKILL, all=True)
    await wait_exit(pid)
    with pytest.raises(FailedPrecondition):
        await runtime.kill(cid, signal.SIGKILL)
    await runtime.delete(cid)
    with pytest.raises(NotFound):
        await runtime.state(cid)
    with open(out_path) as handle:
        text = handle.read()
    assert "started" in text and "exec-out" in text


@pytest.mark.asyncio
async def test_create_failure_carries_runc_message(bundle_factory, runtime_root: str, cid: str, tmp_path) -> None:
    bundle, spec = bundle_factory("bad", ["/does/not/exist"])
    spec["root"]["path"] = "missing-rootfs"
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    runtime = OciRuntime("runc", runtime_root)
    with pytest.raises(Internal) as info:
        await runtime.create(cid, bundle, str(tmp_path / "pid"))
    assert "missing-rootfs" in str(info.value) or "no such file" in str(info.value).lower()
