"""A real sandboxer's first task server (runc-task, wasm-task, quark-task) is a fork of it
(kuasar_shared.sandbox.zygote, issue 19): it shares the sandboxer's interpreter pages, yet looks like a spawned
server to everything that finds it and runs containers to their exact exit codes; a restarted one is the
installed command (so it runs upgraded code), and the pods survive the change."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid

import pytest
from support import KINDS, Ctl, container_config, pod_config, running, task_server_record, wait_for

from kuasar_shared.metrics import scrape_unix
from kuasar_shared.sandbox.task_supervisor import TaskProgram


def _programs() -> dict[str, TaskProgram]:
    """Each type's task program, as its sandboxer finds it (imported here: the test process is in the same venv)."""
    from kuasar_quark_sandboxer.main import QUARK_TASK_PROGRAM
    from kuasar_runc_sandboxer.sandboxer import RUNC_TASK_PROGRAM
    from kuasar_wasm_sandboxer.sandboxer import WASM_TASK_PROGRAM
    return {"runc": RUNC_TASK_PROGRAM, "wasm": WASM_TASK_PROGRAM, "quark": QUARK_TASK_PROGRAM}


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _argv(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode() for a in f.read().split(b"\0")[:-1]]


def _fds(pid: int) -> dict[int, str]:
    return {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}


def _shared_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Shared_Dirty:"))


@pytest.mark.parametrize("sandboxer_metrics", [True])
@pytest.mark.parametrize("sandboxer,kind", [(k, k) for k in KINDS], indirect=["sandboxer"], ids=list(KINDS))
def test_first_task_server_is_forked_and_a_restart_is_spawned(request, tmp_path, sandboxer, kind, images) -> None:
    endpoint, state = sandboxer
    program, spec = _programs()[kind], KINDS[kind]
    pid = task_server_record(state)["pid"]
    parent = int(_stat(pid)[1])
    assert _comm(parent) == f"{kind}-sandboxer"
    # the fork: the sandboxer's command line, interpreter pages shared with it; a spawned server shares none dirty
    assert _argv(pid) == _argv(parent)
    assert _shared_dirty_kb(pid) > 2048
    # and otherwise what a spawned one would be: name, session, stdio, no fd of the sandboxer
    assert _comm(pid) == program.name
    assert os.getsid(pid) == pid
    fds = _fds(pid)
    assert fds[0] == os.devnull and fds[1] == fds[2] == _fds(parent)[2] == str(tmp_path / "sandboxer.log")
    assert all(t.startswith(("socket:", "anon_inode:", "pipe:")) for fd, t in fds.items() if fd > 2), fds
    assert not {t for t in fds.values() if t.startswith("socket:")} & set(_fds(parent).values())
    # it got the flags a spawned one would: --metrics-listen on the sandboxer's private socket
    assert b"# HELP" in asyncio.run(scrape_unix(os.path.join(state, "task-metrics.sock")))

    image_dir = request.getfixturevalue("ticker_images") if kind == "wasm" else images
    ctl = Ctl(kind, endpoint, str(tmp_path / "ctl"), image_dir, "fifo")
    tag = uuid.uuid4().hex[:6]
    cfg = pod_config(str(tmp_path / "pod.json"), f"z-{tag}", f"/kuasar-zygote-{tag}", str(tmp_path / "logs"),
                     **({"pod_namespaces": False} if kind == "wasm" else {}))

    def run(name: str, command: list[str]) -> str:
        ctr = ctl.out("create", pod, container_config(str(tmp_path / f"{name}.json"), name, command,
                                                       image=spec.image), cfg, timeout=120)
        ctl("start", ctr, timeout=120)
        return ctr

    def status(ctr: str) -> dict:
        return json.loads(ctl.out("inspect", ctr))["status"]

    def ticks(ctr: str) -> int:
        return ctl.out("logs", ctr).count("tick ")

    def exits_42(name: str) -> None:
        ctr = run(name, spec.exit42)
        wait_for(lambda: status(ctr)["state"] == "CONTAINER_EXITED", 30)
        assert status(ctr)["exitCode"] == 42
        ctl("rm", ctr)

    pod = ctl.out("runp", cfg, timeout=120)
    try:
        ticker = run("tick", spec.tick)
        wait_for(lambda: ticks(ticker) > 0, 30)
        exits_42("exit-forked")

        os.kill(pid, signal.SIGKILL)
        new = wait_for(lambda: (lambda p: p if p != pid and running(p) else 0)(task_server_record(state)["pid"]), 20)
        assert program.command[-1] in _argv(new)[:3], _argv(new)  # its script (after the #! interpreter) or -m module
        assert int(_stat(new)[1]) == parent and os.getsid(new) == new
        before = ticks(ticker)
        assert status(ticker)["state"] == "CONTAINER_RUNNING"
        wait_for(lambda: ticks(ticker) > before, 20)
        exits_42("exit-spawned")
        ctl("rmp", pod, timeout=120)
    finally:
        ctl("rmp", pod, check=False, timeout=120)
