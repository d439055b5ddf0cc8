"""VmmPod: the common pod record plus the VM's fields, and records written by earlier releases."""
from kuasar_shared.sandbox.pods import PodState
from kuasar_vmm_sandboxer.pod import VmmPod


def test_round_trip_keeps_the_vm_fields():
    pod = VmmPod(id="p1", state=PodState.READY, cgroup_parent="kuasar-vmm/p1", vcpus=2, memory_mb=512,
                 vm={"pid": 42}, network={"nics": []}, timings={"agent": 3600.0}, debug=True)
    assert VmmPod.from_json(pod.to_json()) == pod


def test_a_record_with_the_former_cgroup_key_keeps_its_cgroup():
    """A pod started before the upgrade still has its cgroup removed at shutdown."""
    old = {"id": "p2", "state": "ready", "cgroup": "kuasar-vmm/p2", "cgroup_owned_depth": 2, "vcpus": 1,
           "timings": {"spawn": 2.0, "agent": 9000.0}}
    pod = VmmPod.from_json(old)
    assert (pod.cgroup_parent, pod.cgroup_owned_depth, pod.state) == ("kuasar-vmm/p2", 2, PodState.READY)
