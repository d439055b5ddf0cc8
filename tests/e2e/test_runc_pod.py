"""End to end through kuasar-ctl and a real runc-sandboxer + runc-task + runc: a pod with two
containers sharing the pod's namespaces, logs via FIFO and streaming, exec with exit codes, and
stop/rm/stopp/rmp leaving no process, mount, cgroup, netns or FIFO behind; a pod in a network namespace the
caller made (``runp --netns``) that rmp leaves in place."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid

import pytest
from support import (Ctl, assert_gone, cgroups_named, container_config, mounts_under, pids_with, pod_config,
                     wait_for)


def _pod_config(tmp_path, tag: str) -> str:
    return pod_config(str(tmp_path / "pod.json"), f"e2e-{tag}", f"/kuasar-e2e-{tag}", str(tmp_path / "logs"),
                      hostname=f"e2e-{tag}")


def _ctr_config(tmp_path, name: str, script: str) -> str:
    return container_config(str(tmp_path / f"{name}.yaml"), name, ["/bin/sh", "-c", script])


def _leftovers(root: str, cgroup_parent: str, netns: str) -> list[str]:
    found = mounts_under([root]) + [f"process {pid}" for pid in pids_with(root)] + cgroups_named(cgroup_parent)
    if netns and os.path.exists(netns):
        found.append(netns)
    for dirpath, _, files in os.walk(root):
        found += [os.path.join(dirpath, f) for f in files]
    return found


@pytest.mark.parametrize("io", ["fifo", "streaming"])
def test_pod_with_two_containers(tmp_path, runc_sandboxer, images, io):
    endpoint, _ = runc_sandboxer
    root = str(tmp_path / "ctl")
    ctl = Ctl("runc", endpoint, root, images, io)
    tag = f"{io}-{uuid.uuid4().hex[:6]}"
    pod_cfg = _pod_config(tmp_path, tag)
    pod = ctl.out("runp", pod_cfg)
    netns = json.loads(ctl.out("inspectp", pod[:8]))["info"]["netnsPath"]
    web = ctl.out("create", pod[:8], _ctr_config(tmp_path, "web", "echo web started; echo oops >&2; sleep 3600"),
                  pod_cfg)
    client = ctl.out("create", pod, _ctr_config(tmp_path, "client", "echo client $(hostname); sleep 3600"), pod_cfg)
    assert ctl.out("start", web[:10], client[:10]).split() == [web, client]
    assert set(ctl.out("ps", "-q").split()) == {web, client}

    # logs in CRI format, both streams
    wait_for(lambda: "web started" in ctl.out("logs", web[:10]))
    logs = ctl("logs", web)
    assert logs.stdout.decode() == "web started\n" and logs.stderr.decode() == "oops\n"
    raw = (tmp_path / "logs" / "web.log").read_text().splitlines()
    assert raw[0].split(" ", 3)[1:] in (["stdout", "F", "web started"], ["stderr", "F", "oops"])
    wait_for(lambda: f"client e2e-{tag}" in ctl.out("logs", client))

    # both containers share the pod's network, IPC and UTS namespaces (and not the host's)
    def ns(ctr: str, kind: str) -> str:
        return ctl.out("exec", ctr, "--", "readlink", f"/proc/self/ns/{kind}")
    for kind in ("net", "ipc", "uts"):
        assert ns(web, kind) == ns(client, kind) != os.readlink(f"/proc/self/ns/{kind}")
    assert ns(web, "pid") == ns(client, "pid")  # pid: POD
    assert ctl.out("exec", client, "--", "hostname") == f"e2e-{tag}"

    # exec: exit code passthrough, stderr, stdin, timeout
    result = ctl("exec", web, "--", "sh", "-c", "echo out; echo err >&2; exit 42", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (42, b"out\n", b"err\n")
    assert ctl("exec", "-i", web, "--", "cat", stdin="piped in\n").stdout == b"piped in\n"
    started = time.monotonic()
    assert ctl("exec", "--timeout", "1", web, "--", "sleep", "30", check=False).returncode == 124
    assert time.monotonic() - started < 15

    # stop / rm one container, then stopp / rmp the pod
    ctl("stop", web[:12])
    status = json.loads(ctl.out("inspect", web))["status"]
    assert status["state"] == "CONTAINER_EXITED" and status["exitCode"] == 137
    assert ctl.out("ps", "-q") == client
    ctl("rm", web)
    assert ctl.out("ps", "-a", "-q") == client
    ctl("stopp", pod[:6])
    assert json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY"
    assert json.loads(ctl.out("inspect", client))["status"]["state"] == "CONTAINER_EXITED"
    ctl("rmp", pod)
    assert ctl.out("pods", "-q") == "" and ctl.out("ps", "-a", "-q") == ""
    assert_gone(lambda: _leftovers(root, f"/kuasar-e2e-{tag}", netns))


def test_run_prints_ids_and_rm_of_running_container(tmp_path, runc_sandboxer, images):
    endpoint, _ = runc_sandboxer
    ctl = Ctl("runc", endpoint, str(tmp_path / "ctl"), images, "fifo")
    pod_cfg = _pod_config(tmp_path, uuid.uuid4().hex[:6])
    pod, ctr = ctl.out("run", pod_cfg, _ctr_config(tmp_path, "app", "sleep 3600")).split()
    assert ctl.out("pods", "-q") == pod and ctl.out("ps", "-q") == ctr
    ctl("rm", ctr)  # running: stopped first, like containerd's RemoveContainer
    assert ctl.out("ps", "-a", "-q") == ""
    ctl("rmp", pod)
    assert ctl.out("pods", "-q") == ""


def test_announced_container_is_in_the_pods_task_list_until_removed(tmp_path, runc_sandboxer, images):
    """``--announce-tasks`` (iSulad's way): Controller.Update with extensions.tasks before task Create
    and after removal; the runc sandboxer keeps the list it accepted in its pod state."""
    endpoint, state = runc_sandboxer
    ctl = Ctl("runc", endpoint, str(tmp_path / "ctl"), images, "fifo")
    pod_cfg = _pod_config(tmp_path, uuid.uuid4().hex[:6])
    pod, ctr = ctl.out("run", "--announce-tasks", pod_cfg, _ctr_config(tmp_path, "app", "sleep 3600")).split()

    def announced() -> list[dict]:
        with open(os.path.join(state, pod, "sandbox.json")) as f:
            tasks = json.load(f)["tasks"]
        return json.loads(tasks)["tasks"] if tasks else []
    [task] = announced()
    assert task["task_id"] == ctr and task["spec"]["process"]["args"] == ["/bin/sh", "-c", "sleep 3600"]
    assert task["rootfs"][0]["type"] == "overlay" and task["stdout"].endswith("-stdout")
    ctl("rm", ctr)
    assert announced() == []
    ctl("rmp", pod)


def test_missing_sandboxer_socket_is_explained(tmp_path):
    ctl = Ctl("runc", str(tmp_path / "absent.sock"), str(tmp_path / "ctl"), str(tmp_path), "fifo")
    result = ctl("runp", _pod_config(tmp_path, "x"), check=False)
    assert result.returncode == 1
    assert "is kuasar-runc running? try: systemctl status kuasar-runc" in result.stderr.decode()
    pods_dir = tmp_path / "ctl" / "runc" / "pods"
    assert not pods_dir.exists() or not os.listdir(pods_dir)


def test_runp_in_a_premade_netns_keeps_it(tmp_path, runc_sandboxer, images):
    """``runp --netns``: the pod's containers live in the namespace the caller made (as CNI would), and
    rmp leaves it to the caller."""
    endpoint, _ = runc_sandboxer
    root = str(tmp_path / "ctl")
    ctl = Ctl("runc", endpoint, root, images, "fifo")
    tag = uuid.uuid4().hex[:6]
    name = f"kuasar-e2e-{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    netns = f"/var/run/netns/{name}"
    try:
        pod_cfg = _pod_config(tmp_path, tag)
        pod = ctl.out("runp", "--netns", netns, pod_cfg)
        assert json.loads(ctl.out("inspectp", pod))["info"]["netnsPath"] == netns
        ctr = ctl.out("create", pod, _ctr_config(tmp_path, "app", "sleep 3600"), pod_cfg)
        ctl("start", ctr)
        assert ctl.out("exec", ctr, "--", "readlink", "/proc/self/ns/net") == f"net:[{os.stat(netns).st_ino}]"
        ctl("rmp", pod)
        assert ctl.out("pods", "-q") == ""
        assert os.path.exists(netns)
        assert_gone(lambda: _leftovers(root, f"/kuasar-e2e-{tag}", ""))
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)
