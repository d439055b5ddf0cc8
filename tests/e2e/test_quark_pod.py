"""End to end through kuasar-ctl and a real quark-sandboxer + quark-task + runsc (--platform=ptrace):
two containers of a pod share one application kernel and a volume, FIFO and streaming IO, exec
exit codes, restarts of the sandboxer and of the task server, a Sentry killed with SIGKILL, and
removal leaving no process, mount, cgroup or runsc state behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import uuid

import pytest
from support import (Ctl, assert_gone, cgroups_named, container_config, mounts_under, pids_with, pod_config,
                     start_daemon, stop_and_remove, stop_daemon, tool, wait_for)


class Sandboxer:
    """A quark-sandboxer on a private socket and dir."""

    def __init__(self, tmp_path) -> None:
        self.listen, self.dir, self.tmp = str(tmp_path / "quark.sock"), str(tmp_path / "dir"), tmp_path
        self.proc = None

    def start(self) -> None:
        self.proc = start_daemon([tool("quark-sandboxer"), "--listen", self.listen, "--dir", self.dir,
                                  "--log-level", "debug"], self.listen, str(self.tmp / "sandboxer.log"))

    def stop(self) -> None:
        stop_daemon(self.proc)

    def task_server_pid(self) -> int:
        with open(os.path.join(self.dir, "task-server.json")) as f:
            return int(json.load(f)["pid"])


@pytest.fixture
def quark(tmp_path):
    if os.geteuid() != 0 or not shutil.which("runsc"):
        pytest.skip("needs root and runsc")
    sandboxer = Sandboxer(tmp_path)
    sandboxer.start()
    yield sandboxer
    task_pid = sandboxer.task_server_pid()
    sandboxer.stop()
    for pid in [task_pid, *pids_with(os.path.join(sandboxer.dir, "task.sock"))]:  # the server and its front
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _pod_config(tmp_path, tag: str) -> str:
    return pod_config(str(tmp_path / f"pod-{tag}.json"), f"q-{tag}", f"/kuasar-quark-e2e-{tag}",
                      str(tmp_path / "logs"), hostname=f"q-{tag}")


def _ctr_config(tmp_path, name: str, script: str, volume: str = "") -> str:
    mounts = {"mounts": [{"container_path": "/vol", "host_path": volume}]} if volume else {}
    return container_config(str(tmp_path / f"{name}.json"), name, ["/bin/sh", "-c", script], **mounts)


def _wait_for(predicate):
    """Up to 20 s: a gVisor kernel is slower to start and stop than runc's containers."""
    return wait_for(predicate, 20.0)


def _leftovers(paths: list[str], cgroup_parent: str, netns: str) -> list[str]:
    daemons = ("quark-sandboxer", "quark-task", "taskfront")  # they serve every pod and outlive this one
    pids = sorted({pid for path in paths for pid in pids_with(path, unless=daemons)})
    found = mounts_under(paths) + [f"process {pid}" for pid in pids] + cgroups_named(cgroup_parent)
    if netns and os.path.exists(netns):
        found.append(netns)
    return found


def _pod_files(state_dir: str) -> list[str]:
    """Files of pods and of runsc's state left in the sandboxer's dir."""
    found = []
    for name in os.listdir(state_dir):
        if name in (".runsc", ".tasks") or not name.startswith("."):
            for dirpath, _, files in os.walk(os.path.join(state_dir, name)):
                # .tasks/.requests: the task server's request journal, pruned by age (task.journal)
                found += [os.path.join(dirpath, f) for f in files if not dirpath.endswith(".requests")]
    return [f for f in found if not f.endswith(("task-server.json", "task.sock", "task-backend.sock"))]


@pytest.mark.parametrize("io", ["fifo", "streaming"])
def test_pod_with_two_containers_in_one_kernel(tmp_path, quark, images, io):
    root = str(tmp_path / "ctl")
    ctl = Ctl("quark", quark.listen, root, images, io)
    tag = f"{io}-{uuid.uuid4().hex[:6]}"
    volume = tmp_path / "volume"
    volume.mkdir()
    pod_cfg = _pod_config(tmp_path, tag)
    pod = ctl.out("runp", pod_cfg)
    netns = json.loads(ctl.out("inspectp", pod))["info"]["netnsPath"]
    a = ctl.out("create", pod, _ctr_config(tmp_path, "a", "uname -r; echo from-a > /vol/shared; sleep 3600",
                                           str(volume)), pod_cfg)
    b = ctl.out("create", pod, _ctr_config(tmp_path, "b", "while [ ! -s /vol/shared ]; do sleep 0.1; done; "
                                           "uname -r; cat /vol/shared; sleep 3600", str(volume)), pod_cfg)
    ctl("start", a, b)

    # one application kernel for the pod: both see gVisor's kernel, not the host's, and the volume
    host = os.uname().release
    kernel = _wait_for(lambda: ctl.out("logs", a))
    assert kernel != host
    assert _wait_for(lambda: ctl.out("logs", b) if "from-a" in ctl.out("logs", b) else "") == f"{kernel}\nfrom-a"
    assert ctl.out("exec", b, "--", "uname", "-r") == kernel
    assert ctl.out("exec", a, "--", "cat", "/proc/version").startswith("Linux version " + kernel)
    assert (volume / "shared").read_text() == "from-a\n"

    # exec: exit codes, stderr, stdin
    result = ctl("exec", a, "--", "sh", "-c", "echo out; echo err >&2; exit 42", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (42, b"out\n", b"err\n")
    assert ctl("exec", "-i", b, "--", "cat", stdin="piped in\n").stdout == b"piped in\n"

    stop_and_remove(ctl, a, pod)
    assert ctl.out("pods", "-q") == "" and ctl.out("ps", "-a", "-q") == ""
    assert_gone(lambda: _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", netns))
    assert _pod_files(quark.dir) == []


def test_restarts_and_killed_sentry(tmp_path, quark, images):
    root = str(tmp_path / "ctl")
    ctl = Ctl("quark", quark.listen, root, images, "fifo")
    tag = uuid.uuid4().hex[:6]
    pod_cfg = _pod_config(tmp_path, tag)
    pod, ctr = ctl.out("run", pod_cfg, _ctr_config(tmp_path, "app", "echo up; sleep 3600")).split()
    _wait_for(lambda: "up" in ctl.out("logs", ctr))
    sentry = json.loads(ctl.out("inspectp", pod))["info"]["pid"]

    # restart of the sandboxer: the pod and its container keep running
    quark.stop()
    quark.start()
    assert json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_READY"
    assert ctl.out("exec", ctr, "--", "echo", "after-sandboxer-restart") == "after-sandboxer-restart"

    # kill -9 of the task server: the sandboxer starts a new one, which re-adopts the container
    old_task = quark.task_server_pid()
    os.kill(old_task, signal.SIGKILL)
    _wait_for(lambda: quark.task_server_pid() != old_task)
    assert ctl.out("exec", ctr, "--", "echo", "after-task-restart") == "after-task-restart"
    assert json.loads(ctl.out("inspect", ctr))["status"]["state"] == "CONTAINER_RUNNING"

    # kill -9 of the Sentry: the pod is not ready, the container's wait returns, removal works
    os.kill(int(sentry), signal.SIGKILL)
    try:  # the Sentry outlived the first sandboxer and may have re-parented to this (subreaper) test process
        os.waitpid(int(sentry), 0)
    except ChildProcessError:
        pass
    _wait_for(lambda: json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY")
    _wait_for(lambda: json.loads(ctl.out("inspect", ctr))["status"]["state"] == "CONTAINER_EXITED")
    ctl("rmp", pod)
    assert ctl.out("pods", "-q") == ""
    assert_gone(lambda: _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", ""))
    assert _pod_files(quark.dir) == []
