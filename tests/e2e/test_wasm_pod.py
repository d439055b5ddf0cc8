"""End to end through kuasar-ctl and a real wasm-sandboxer + wasm-task + wasmtime runners: a pod with
two wasm containers (FIFO and streaming IO), logs, exec of another module with exit codes, a trap,
stop/rm/stopp/rmp leaving no process, mount, cgroup or file behind."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from support import (Ctl, assert_gone, cgroups_named, container_config, kill, mounts_under, pids_with, pod_config,
                     start_daemon, stop_and_remove, stop_daemon, tool, wait_for, wasm_image)

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
    images = tmp_path_factory.mktemp("wasm-images")
    bin_dir = wasm_image(images, "wasm-demo", "demo.wasm", DEMO_C)
    (bin_dir / "readme.txt").write_text("not a module\n")
    return str(images)


@pytest.fixture
def wasm_sandboxer(tmp_path):
    """A wasm-sandboxer on a private socket and dir; it and its task server are stopped afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    listen, state = str(tmp_path / "wasm.sock"), str(tmp_path / "dir")
    proc = start_daemon([tool("wasm-sandboxer"), "--listen", listen, "--dir", state, "--log-level", "debug"],
                        listen, str(tmp_path / "sandboxer.log"))
    yield listen, state
    with open(os.path.join(state, "task-server.json")) as handle:
        task_pid = json.load(handle)["pid"]
    stopped = stop_daemon(proc)
    # the task server outlives the sandboxer by design; runners of a failed test outlive both
    kill([task_pid, *pids_with(state)])
    assert stopped, "wasm-sandboxer did not stop on SIGTERM"


def _leftovers(paths: list[str], cgroup_parent: str) -> list[str]:
    found = mounts_under(paths)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:  # the task server's one warm runner is in no pod cgroup and is not a leftover
            with open(f"/proc/{pid}/cgroup") as handle:
                if cgroup_parent in handle.read():
                    found.append(f"process {pid}")
        except OSError:
            pass
    return found + cgroups_named(cgroup_parent)


@pytest.mark.parametrize("io", ["fifo", "streaming"])
def test_wasm_pod_with_two_containers(tmp_path, wasm_sandboxer, wasm_images, io) -> None:
    endpoint, state = wasm_sandboxer
    root = str(tmp_path / "ctl")
    ctl = Ctl("wasm", endpoint, root, wasm_images, io)
    tag = f"{io}-{uuid.uuid4().hex[:6]}"
    pod_cfg = pod_config(str(tmp_path / "pod.json"), f"wasm-{tag}", f"/kuasar-wasm-e2e-{tag}", str(tmp_path / "logs"),
                         pod_namespaces=False)

    def ctr(name: str, args: list[str]) -> str:
        return container_config(str(tmp_path / f"{name}.json"), name, ["/bin/demo.wasm", *args], image="wasm-demo",
                                envs=[{"key": "GREETING", "value": "hi"}],
                                linux={"resources": {"memory_limit_in_bytes": 128 << 20}})

    pod = ctl.out("runp", pod_cfg)
    try:
        web = ctl.out("create", pod, ctr("web", ["serve", "web"]), pod_cfg)
        other = ctl.out("create", pod, ctr("other", ["serve", "other"]), pod_cfg)
        assert ctl.out("start", web, other).split() == [web, other]
        assert set(ctl.out("ps", "-q").split()) == {web, other}
        wait_for(lambda: "web started, GREETING=hi" in ctl.out("logs", web))
        logs = ctl("logs", web)
        assert logs.stdout == b"web started, GREETING=hi\n" and logs.stderr == b"web on stderr\n"
        wait_for(lambda: "other started" in ctl.out("logs", other))

        result = ctl("exec", web, "--", "/bin/demo.wasm", "exit", "42", check=False)
        assert (result.returncode, result.stdout, result.stderr) == (42, b"out\n", b"err\n")
        assert ctl("exec", "-i", web, "--", "/bin/demo.wasm", "cat", stdin="piped in\n").stdout == b"piped in\n"
        trapped = ctl("exec", web, "--", "/bin/demo.wasm", "trap", check=False)
        assert trapped.returncode == 134 and b"wasm trap" in trapped.stderr
        bad = ctl("exec", web, "--", "/bin/readme.txt", check=False)
        assert bad.returncode != 0 and b"not a WebAssembly module" in bad.stderr
        assert ctl("exec", "--timeout", "1", web, "--", "/bin/demo.wasm", "serve", "x", check=False).returncode == 124

        stop_and_remove(ctl, web, pod)
    finally:
        ctl("rmp", pod, check=False)  # a failed step must not leave the pod behind
    assert ctl.out("pods", "-q") == "" and ctl.out("ps", "-a", "-q") == ""
    assert_gone(lambda: _leftovers([root, state], f"/kuasar-wasm-e2e-{tag}"))
    assert not [d for d in os.listdir(state) if not d.startswith(".")
                and d not in ("task-server.json", "task.sock", "task-backend.sock")]
