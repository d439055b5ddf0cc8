"""End to end through kuasar-ctl and a real quark-sandboxer + quark-task + runsc (--platform=ptrace):
two containers of a pod share one application kernel and a volume, FIFO and streaming IO, exec
exit codes, restarts of the sandboxer and of the task server, a Sentry killed with SIGKILL, and
removal leaving no process, mount, cgroup or runsc state behind."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

BIN = os.path.dirname(sys.executable)


def _tool(name: str) -> str:
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else (shutil.which(name) or name)


class Sandboxer:
    """A quark-sandboxer on a private socket and dir."""

    def __init__(self, tmp_path) -> None:
        self.listen, self.dir, self.tmp = str(tmp_path / "quark.sock"), str(tmp_path / "dir"), tmp_path
        self.proc = None

    def start(self) -> None:
        log = open(self.tmp / "sandboxer.log", "ab")
        self.proc = subprocess.Popen([_tool("quark-sandboxer"), "--listen", self.listen, "--dir", self.dir,
                                      "--log-level", "debug"], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(self.listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("quark-sandboxer did not start:\n" + (self.tmp / "sandboxer.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

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
    try:
        os.kill(task_pid, signal.SIGTERM)
    except ProcessLookupError:
        pass


class Ctl:
    def __init__(self, endpoint: str, root: str, images: str, io: str) -> None:
        self.base = [_tool("kuasar-ctl"), "-s", "quark", "--endpoint", endpoint, "--root", root, "--images", images,
                     "--io", io]

    def __call__(self, *args: str, check: bool = True, stdin: str = "", timeout: float = 60):
        proc = subprocess.run(self.base + list(args), input=stdin.encode(), capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kuasar-ctl {' '.join(args)} -> {proc.returncode}\n{proc.stderr.decode()}")
        return proc

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode().strip()


def _pod_config(tmp_path, tag: str) -> str:
    path = tmp_path / f"pod-{tag}.json"
    path.write_text(json.dumps({
        "metadata": {"name": f"q-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "hostname": f"q-{tag}", "log_directory": str(tmp_path / "logs"),
        "linux": {"cgroup_parent": f"/kuasar-quark-e2e-{tag}",
                  "security_context": {"namespace_options": {"network": 0, "pid": 0, "ipc": 0}}}}))
    return str(path)


def _ctr_config(tmp_path, name: str, script: str, volume: str = "") -> str:
    path = tmp_path / f"{name}.json"
    doc = {"metadata": {"name": name}, "image": {"image": "busybox"}, "command": ["/bin/sh", "-c", script],
           "log_path": f"{name}.log"}
    if volume:
        doc["mounts"] = [{"container_path": "/vol", "host_path": volume}]
    path.write_text(json.dumps(doc))
    return str(path)


def _wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _leftovers(paths: list[str], cgroup_parent: str, netns: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as f:
        found += [line.split()[4] for line in f if any(p in line.split()[4] for p in paths)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if any(p.encode() in cmdline for p in paths) and b"quark-sandboxer" not in cmdline \
                and b"quark-task" not in cmdline:
            found.append(f"process {pid}: {cmdline[:100]!r}")
    found += [f"cgroup {c}" for c in os.listdir("/sys/fs/cgroup")
              if os.path.exists(os.path.join("/sys/fs/cgroup", c, cgroup_parent.strip("/")))]
    if netns and os.path.exists(netns):
        found.append(netns)
    return found


def _pod_files(state_dir: str) -> list[str]:
    """Files of pods and of runsc's state left in the sandboxer's dir."""
    found = []
    for name in os.listdir(state_dir):
        if name in (".runsc", ".tasks") or not name.startswith("."):
            for dirpath, _, files in os.walk(os.path.join(state_dir, name)):
                found += [os.path.join(dirpath, f) for f in files]
    return [f for f in found if not f.endswith(("task-server.json", "task.sock"))]


@pytest.mark.parametrize("io", ["fifo", "streaming"])
def test_pod_with_two_containers_in_one_kernel(tmp_path, quark, images, io):
    root = str(tmp_path / "ctl")
    ctl = Ctl(quark.listen, root, images, io)
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

    ctl("stop", a)
    status = json.loads(ctl.out("inspect", a))["status"]
    assert status["state"] == "CONTAINER_EXITED" and status["exitCode"] == 137
    ctl("rm", a)
    ctl("stopp", pod)
    assert json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY"
    ctl("rmp", pod)
    assert ctl.out("pods", "-q") == "" and ctl.out("ps", "-a", "-q") == ""
    try:
        _wait_for(lambda: not _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", netns), 10)
    except AssertionError:
        assert _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", netns) == []
    assert _pod_files(quark.dir) == []


def test_restarts_and_killed_sentry(tmp_path, quark, images):
    root = str(tmp_path / "ctl")
    ctl = Ctl(quark.listen, root, images, "fifo")
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
    try:
        _wait_for(lambda: not _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", ""), 10)
    except AssertionError:
        assert _leftovers([root, quark.dir + "/"], f"/kuasar-quark-e2e-{tag}", "") == []
    assert _pod_files(quark.dir) == []
