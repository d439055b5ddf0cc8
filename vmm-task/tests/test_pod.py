"""pod: the JSON PodSandboxConfig, sysctls, hostname and pinned namespaces."""
import json
import os
import subprocess

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_vmm_task.pod import (PodConfig, PodNamespaces, _children, apply_sysctls, namespaced_sysctls,
                                 parse_pod_config, pod_hostname)


def test_parse_serde_snake_case():
    cfg = parse_pod_config(json.dumps({
        "metadata": {"name": "p", "uid": "u1"}, "hostname": "pod-1",
        "linux": {"sysctls": {"net.ipv4.ip_forward": "1"},
                  "security_context": {"namespace_options": {"pid": 0, "ipc": 0}}}}).encode())
    assert cfg == PodConfig(hostname="pod-1", sysctls={"net.ipv4.ip_forward": "1"}, share_pid=True, pod_id="u1")


def test_parse_protobuf_json_camel_case_and_enum_names():
    raw = {"linux": {"securityContext": {"namespaceOptions": {"pid": "CONTAINER"}}}}
    cfg = parse_pod_config(json.dumps(raw).encode())
    assert cfg.share_pid is False and cfg.hostname == ""
    assert parse_pod_config(b"").share_pid is True  # CRI default mode is POD


@pytest.mark.parametrize("raw, why", [
    (b"not json", "not JSON"), (b"[1]", "JSON object"), (b'{"hostname": "../etc"}', "hostname"),
    (b'{"linux": {"sysctls": {"../../x": "1"}}}', "sysctl"), (b'{"linux": {"sysctls": {"a..b": "1"}}}', "sysctl"),
])
def test_parse_rejects_bad_input(raw, why):
    with pytest.raises(InvalidArgument, match=why):
        parse_pod_config(raw)


def test_apply_sysctls_writes_files(tmp_path):
    (tmp_path / "net" / "core").mkdir(parents=True)
    (tmp_path / "net" / "core" / "somaxconn").write_text("128")
    apply_sysctls({"net.core.somaxconn": "1024"}, proc_sys=str(tmp_path))
    assert (tmp_path / "net" / "core" / "somaxconn").read_text() == "1024"
    with pytest.raises(InvalidArgument, match="kernel.nope"):
        apply_sysctls({"kernel.nope": "1"}, proc_sys=str(tmp_path))


def test_namespaced_sysctls():
    assert namespaced_sysctls({"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100", "kernel.sem": "1 2 3 4",
                               "kernel/msgmax": "9", "net.ipv4.ip_forward": "1", "kernel.pid_max": "9"}) == {
        "kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100", "kernel.sem": "1 2 3 4", "kernel/msgmax": "9"}


def test_share_hostname_wins(tmp_path):
    assert pod_hostname(PodConfig(hostname="cfg"), share=str(tmp_path)) == "cfg"
    (tmp_path / "hostname").write_text("from-host\n")
    assert pod_hostname(PodConfig(hostname="cfg"), share=str(tmp_path)) == "from-host"
    assert pod_hostname(PodConfig(), share=str(tmp_path / "none")) == "localhost"


@pytest.mark.parametrize("share_pid", [False, True])
async def test_namespaces_are_pinned(tmp_path, share_pid):
    ns = PodNamespaces(str(tmp_path / "ns"))
    with open("/proc/sys/fs/mqueue/msg_max") as f:
        node_msg_max = f.read()
    # critest's safe and unsafe sysctls: IPC sysctls reach the pod's IPC namespace (the containers')
    await ns.create("guest-pod", share_pid, {"kernel.shm_rmid_forced": "1", "fs.mqueue.msg_max": "100",
                                             "net.ipv4.ip_forward": "1"})
    try:
        for key, value in (("kernel/shm_rmid_forced", "1"), ("fs/mqueue/msg_max", "100")):
            out = subprocess.run(["nsenter", f"--ipc={ns.path('ipc')}", "cat", f"/proc/sys/{key}"], check=True,
                                 capture_output=True, text=True)
            assert out.stdout.strip() == value
        with open("/proc/sys/fs/mqueue/msg_max") as f:
            assert f.read() == node_msg_max  # not the agent's (here: the node's) namespace
        assert ns.path("net") is None
        uts = ns.path("uts")
        out = subprocess.run(["nsenter", f"--uts={uts}", "hostname"], check=True, capture_output=True, text=True)
        assert out.stdout.strip() == "guest-pod"
        assert os.stat(ns.path("ipc")).st_ino != os.stat(f"/proc/{os.getpid()}/ns/ipc").st_ino
        if share_pid:
            assert ns.holder is not None and ns.holder.returncode is None
            assert ns.path("pid")
            # the namespace's init, seen by every container of the pod, is no `sleep` to their pgrep
            init = _children(ns.holder.pid)
            assert len(init) == 1
            with open(f"/proc/{init[0]}/comm") as f:
                assert f.read().strip() != "sleep"
    finally:
        await ns.close()
        for t in ns.types:
            subprocess.run(["umount", os.path.join(ns.ns_dir, t)], check=False)
