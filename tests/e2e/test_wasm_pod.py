"""End to end through kuasar-ctl and a real wasm-sandboxer + wasm-task + wasmtime runners: a pod with
two wasm containers (FIFO and streaming IO), logs, exec of another module with exit codes, a trap,
stop/rm/stopp/rmp leaving no process, mount, cgroup or file behind."""
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
CTL = os.path.join(BIN, "kuasar-ctl") if os.path.exists(os.path.join(BIN, "kuasar-ctl")) else "kuasar-ctl"
SANDBOXER = os.path.join(BIN, "wasm-sandboxer") if os.path.exists(os.path.join(BIN, "wasm-sandboxer")) \
    else "wasm-sandboxer"

#: the demo module: "serve NAME" prints and sleeps (WASI poll_oneoff), "exit N" exits, "trap" traps
DEMO_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "serve")) {
        printf("%s started, GREETING=%s\n", argc > 2 ? argv[2] : "?", getenv("GREETING") ?: "");
        fprintf(stderr, "%s on stderr\n", argc > 2 ? argv[2] : "?");
        fflush(stdout);
        for (;;) sleep(1);
    }
    if (!strcmp(mode, "exit")) { printf("out\n"); fprintf(stderr, "err\n"); return atoi(argv[2]); }
    if (!strcmp(mode, "trap")) __builtin_trap();
    if (!strcmp(mode, "cat")) { char b[256]; while (fgets(b, sizeof b, stdin)) fputs(b, stdout); return 0; }
    return 1;
}
"""


@pytest.fixture(scope="module")
def wasm_images(tmp_path_factory) -> str:
    if not shutil.which("clang") or not os.path.exists("/usr/lib/wasm32-wasi/libc.a"):
        pytest.skip("needs clang, lld, wasi-libc and libclang-rt-dev-wasm32 (hack/setup.sh installs them)")
    images = tmp_path_factory.mktemp("wasm-images")
    bin_dir = images / "wasm-demo" / "bin"
    bin_dir.mkdir(parents=True)
    (images / "demo.c").write_text(DEMO_C)
    (bin_dir / "readme.txt").write_text("not a module\n")
    (bin_dir / "readme.txt").write_text("not a module\n")
    subprocess.run(["clang", "--target=wasm32-wasi", "-O2", "-o", str(bin_dir / "demo.wasm"), str(images / "demo.c")],
                   check=True)
    return str(images)


@pytest.fixture
def wasm_sandboxer(tmp_path):
    """A wasm-sandboxer on a private socket and dir; it and its task server are stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    listen, state = str(tmp_path / "wasm.sock"), str(tmp_path / "dir")
    log = open(tmp_path / "sandboxer.log", "wb")
    proc = subprocess.Popen([SANDBOXER, "--listen", listen, "--dir", state, "--log-level", "debug"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("wasm-sandboxer did not start:\n" + (tmp_path / "sandboxer.log").read_text())
        time.sleep(0.05)
    yield listen, state
    with open(os.path.join(state, "task-server.json")) as handle:
        task_pid = json.load(handle)["pid"]
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    # the task server outlives the sandboxer by design; runners of a failed test outlive both
    for pid in [task_pid] + [int(p) for p in filter(str.isdigit, os.listdir("/proc")) if pid_in_paths(p, [state])]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    log.close()


class Ctl:
    def __init__(self, endpoint: str, root: str, images: str, io: str) -> None:
        self.base = [CTL, "-s", "wasm", "--endpoint", endpoint, "--root", root, "--images", images, "--io", io]

    def __call__(self, *args: str, check: bool = True, stdin: str = "", timeout: float = 60):
        proc = subprocess.run(self.base + list(args), input=stdin.encode(), capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kuasar-ctl {' '.join(args)} -> {proc.returncode}\n{proc.stderr.decode()}")
        return proc

    def out(self, *args: str) -> str:
        return self(*args).stdout.decode().strip()


def _wait_for(predicate, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def _leftovers(paths: list[str], cgroup_parent: str) -> list[str]:
    found = []
    with open("/proc/self/mountinfo") as handle:
        found += [line.split()[4] for line in handle if any(p in line.split()[4] for p in paths)]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:  # the task server's one warm runner is in no pod cgroup and is not a leftover
            with open(f"/proc/{pid}/cgroup") as handle:
                if cgroup_parent in handle.read():
                    found.append(f"process {pid}")
        except OSError:
            pass
    found += [f"cgroup {c}" for c in os.listdir("/sys/fs/cgroup")
              if os.path.exists(os.path.join("/sys/fs/cgroup", c, cgroup_parent.strip("/")))]
    return found


def pid_in_paths(pid: str, paths: list[str]) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read()
    except OSError:
        return False
    return any(p.encode() in cmdline for p in paths)


@pytest.mark.parametrize("io", ["fifo", "streaming"])
def test_wasm_pod_with_two_containers(tmp_path, wasm_sandboxer, wasm_images, io) -> None:
    endpoint, state = wasm_sandboxer
    root = str(tmp_path / "ctl")
    ctl = Ctl(endpoint, root, wasm_images, io)
    tag = f"{io}-{uuid.uuid4().hex[:6]}"
    pod_cfg = tmp_path / "pod.json"
    pod_cfg.write_text(json.dumps({
        "metadata": {"name": f"wasm-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "log_directory": str(tmp_path / "logs"), "linux": {"cgroup_parent": f"/kuasar-wasm-e2e-{tag}"}}))

    def ctr(name: str, args: list[str]) -> str:
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"metadata": {"name": name}, "image": {"image": "wasm-demo"},
                                    "command": ["/bin/demo.wasm", *args], "log_path": f"{name}.log",
                                    "envs": [{"key": "GREETING", "value": "hi"}],
                                    "linux": {"resources": {"memory_limit_in_bytes": 128 << 20}}}))
        return str(path)

    pod = ctl.out("runp", str(pod_cfg))
    try:
        web = ctl.out("create", pod, ctr("web", ["serve", "web"]), str(pod_cfg))
        other = ctl.out("create", pod, ctr("other", ["serve", "other"]), str(pod_cfg))
        assert ctl.out("start", web, other).split() == [web, other]
        assert set(ctl.out("ps", "-q").split()) == {web, other}
        _wait_for(lambda: "web started, GREETING=hi" in ctl.out("logs", web))
        logs = ctl("logs", web)
        assert logs.stdout == b"web started, GREETING=hi\n" and logs.stderr == b"web on stderr\n"
        _wait_for(lambda: "other started" in ctl.out("logs", other))

        result = ctl("exec", web, "--", "/bin/demo.wasm", "exit", "42", check=False)
        assert (result.returncode, result.stdout, result.stderr) == (42, b"out\n", b"err\n")
        assert ctl("exec", "-i", web, "--", "/bin/demo.wasm", "cat", stdin="piped in\n").stdout == b"piped in\n"
        trapped = ctl("exec", web, "--", "/bin/demo.wasm", "trap", check=False)
        assert trapped.returncode == 134 and b"wasm trap" in trapped.stderr
        bad = ctl("exec", web, "--", "/bin/readme.txt", check=False)
        assert bad.returncode != 0 and b"not a WebAssembly module" in bad.stderr
        assert ctl("exec", "--timeout", "1", web, "--", "/bin/demo.wasm", "serve", "x", check=False).returncode == 124

        ctl("stop", web)
        status = json.loads(ctl.out("inspect", web))["status"]
        assert status["state"] == "CONTAINER_EXITED" and status["exitCode"] == 137
        ctl("rm", web)
        ctl("stopp", pod)
        assert json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY"
        ctl("rmp", pod)
    finally:
        ctl("rmp", pod, check=False)  # a failed step must not leave the pod behind
    assert ctl.out("pods", "-q") == "" and ctl.out("ps", "-a", "-q") == ""
    try:
        _wait_for(lambda: not _leftovers([root, state], f"/kuasar-wasm-e2e-{tag}"), 10)
    except AssertionError:
        assert _leftovers([root, state], f"/kuasar-wasm-e2e-{tag}") == []
    assert sorted(os.listdir(state)) == [".tasks", "task-server.json", "task.sock"] or \
        not [d for d in os.listdir(state) if not d.startswith(".") and d not in ("task-server.json", "task.sock")]
