"""tasks: the host-written spec adapted to the guest (namespaces, cgroups)."""
from kuasar_vmm_task.pod import PodNamespaces
from kuasar_vmm_task.tasks import adapt_spec


def _spec(ns):
    return {"hostname": "x", "process": {"args": ["sh"]}, "linux": {"namespaces": ns}}


def test_pod_namespaces_joined_network_dropped(tmp_path):
    pod = PodNamespaces(str(tmp_path))
    pod.types = ("ipc", "uts", "pid")
    spec = adapt_spec(_spec([{"type": "network", "path": "/proc/5/ns/net"}, {"type": "ipc", "path": "/proc/5/ns/ipc"},
                             {"type": "uts"}, {"type": "pid", "path": "/proc/5/ns/pid"}, {"type": "mount"}]), "c1", pod)
    assert spec["linux"]["namespaces"] == [
        {"type": "ipc", "path": f"{tmp_path}/ipc"}, {"type": "uts", "path": f"{tmp_path}/uts"},
        {"type": "pid", "path": f"{tmp_path}/pid"}, {"type": "mount"}]
    assert "hostname" not in spec  # shared UTS: the pod's hostname stays
    assert spec["linux"]["cgroupsPath"] == "/kuasar/c1"


def test_without_pod_namespaces_host_paths_become_new_namespaces(tmp_path):
    pod = PodNamespaces(str(tmp_path))
    spec = adapt_spec(_spec([{"type": "pid", "path": "/proc/9/ns/pid"}, {"type": "ipc"}]), "c2", pod)
    assert spec["linux"]["namespaces"] == [{"type": "pid"}, {"type": "ipc"}]
    assert spec["hostname"] == "x"


def test_existing_cgroups_path_kept(tmp_path):
    spec = _spec([])
    spec["linux"]["cgroupsPath"] = "/kubepods/pod1/c3"
    assert adapt_spec(spec, "c3", PodNamespaces(str(tmp_path)))["linux"]["cgroupsPath"] == "/kubepods/pod1/c3"
