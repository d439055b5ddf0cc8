import json
import os
import shutil
import subprocess

import pytest

from kuasar_shared.errors import InvalidArgument
from kuasar_shared.mounts import is_mountpoint
from kuasar_shared.values import Mount
from kuasar_vmm_sandboxer import bundle

SPEC = {
    "root": {"path": "rootfs"},
    "process": {"args": ["sh"], "apparmorProfile": "x"},
    "hooks": {"prestart": [{"path": "/usr/bin/hook"}]},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
               {"destination": "/dev/shm", "type": "bind", "source": "/dev/shm", "options": ["rbind"]}],
    "linux": {"namespaces": [{"type": "pid", "path": "/proc/7/ns/pid"}, {"type": "network", "path": "/x"},
                             {"type": "ipc", "path": "/proc/7/ns/ipc"}, {"type": "mount"}, {"type": "cgroup"}],
              "resources": {"cpu": {"cpus": "0-1", "shares": 2}}},
}


def test_guest_spec_rewrites():
    out = bundle.guest_spec(SPEC, "c1")
    assert out["linux"]["namespaces"] == [{"type": "pid", "path": "/run/sandbox-ns/pid"},
                                          {"type": "ipc", "path": "/run/sandbox-ns/ipc"}, {"type": "mount"}]
    assert "hooks" not in out and "apparmorProfile" not in out["process"]
    assert out["linux"]["resources"]["cpu"] == {"shares": 2}
    assert SPEC["hooks"]  # the input is not modified


def test_prepare_bind_rootfs_volumes_and_remove(short_tmp):
    host_bundle = os.path.join(short_tmp, "bundle")
    os.makedirs(os.path.join(host_bundle, "rootfs", "bin"))
    vol = os.path.join(short_tmp, "vol")
    os.makedirs(vol)
    with open(os.path.join(vol, "f"), "w") as f:
        f.write("hi")
    spec = json.loads(json.dumps(SPEC))
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": vol, "options": ["rbind", "ro"]})
    with open(os.path.join(host_bundle, "config.json"), "w") as f:
        json.dump(spec, f)
    pod_dir = os.path.join(short_tmp, "pod")
    assert bundle.prepare(pod_dir, "c1", bundle.read_spec(host_bundle), [], host_bundle) == "/run/kuasar/state/c1"
    cdir = bundle.container_dir(pod_dir, "c1")
    assert is_mountpoint(os.path.join(cdir, "rootfs")) and os.path.isdir(os.path.join(cdir, "rootfs", "bin"))
    with open(os.path.join(cdir, "config.json")) as f:
        out = json.load(f)
    data = [m for m in out["mounts"] if m["destination"] == "/data"][0]
    assert data["source"] == "/run/kuasar/state/c1/mounts/2"
    with open(os.path.join(cdir, "mounts", "2", "f")) as f:
        assert f.read() == "hi"
    shm = [m for m in out["mounts"] if m["destination"] == "/dev/shm"][0]
    assert shm["type"] == "tmpfs"
    assert bundle.is_prepared(pod_dir, "c1")
    bundle.remove(pod_dir, "c1")
    assert not os.path.exists(cdir) and os.path.exists(os.path.join(vol, "f"))


def test_prepare_overlay_rootfs(short_tmp):
    lower, upper, work = (os.path.join(short_tmp, n) for n in ("l", "u", "w"))
    for d in (lower, upper, work):
        os.makedirs(d)
    open(os.path.join(lower, "marker"), "w").close()
    m = Mount("overlay", "overlay", "", (f"lowerdir={lower}", f"upperdir={upper}", f"workdir={work}"))
    bundle.prepare(short_tmp + "/pod", "c2", {"root": {"path": "/elsewhere"}}, [m])
    assert os.path.exists(os.path.join(bundle.container_dir(short_tmp + "/pod", "c2"), "rootfs", "marker"))
    bundle.remove(short_tmp + "/pod", "c2")


def test_bad_input_leaves_nothing(short_tmp):
    spec = {"root": {"path": "rootfs"}, "mounts": [{"destination": "/x", "type": "bind", "source": "/nope"}]}
    os.makedirs(os.path.join(short_tmp, "b", "rootfs"))
    with pytest.raises(InvalidArgument, match="/nope"):
        bundle.prepare(short_tmp + "/pod", "c3", spec, [], os.path.join(short_tmp, "b"))
    assert not os.path.exists(bundle.container_dir(short_tmp + "/pod", "c3"))
    with pytest.raises(InvalidArgument):
        bundle.container_dir(short_tmp, "../etc")
    with open(os.path.join(short_tmp, "config.json"), "wb") as f:
        f.write(b"[1]")
    with pytest.raises(InvalidArgument, match="JSON object"):
        bundle.read_spec(short_tmp)


def test_prepare_binds_the_pod_files_from_the_share(short_tmp):
    """hostname, hosts and resolv.conf of the pod (on the share since pod Create) are bound into a
    container at /etc/... in guest paths unless the spec mounts something there; read-only with a
    read-only rootfs (containerd adds them only for its own podsandbox pods: critest's DNS config)."""
    host_bundle = os.path.join(short_tmp, "bundle")
    os.makedirs(os.path.join(host_bundle, "rootfs"))
    pod_dir = os.path.join(short_tmp, "pod")
    os.makedirs(os.path.join(pod_dir, "shared"))
    for name in ("hostname", "hosts", "resolv.conf"):
        with open(os.path.join(pod_dir, "shared", name), "w") as f:
            f.write(name + "\n")
    spec = json.loads(json.dumps(SPEC))
    bundle.prepare(pod_dir, "c1", spec, [], host_bundle)
    with open(os.path.join(bundle.container_dir(pod_dir, "c1"), "config.json")) as f:
        mounts = {m["destination"]: m for m in json.load(f)["mounts"]}
    for destination, name in (("/etc/hostname", "hostname"), ("/etc/hosts", "hosts"),
                              ("/etc/resolv.conf", "resolv.conf")):
        assert mounts[destination] == {"destination": destination, "type": "bind",
                                       "source": "/run/kuasar/state/" + name,
                                       "options": ["rbind", "rprivate", "rw"]}
    # the engine's own mount wins; a read-only rootfs gets read-only files; a missing file is not bound
    os.remove(os.path.join(pod_dir, "shared", "hosts"))
    spec = json.loads(json.dumps(SPEC))
    spec["root"]["readonly"] = True
    own = {"destination": "/etc/resolv.conf", "type": "bind", "source": host_bundle, "options": ["rbind"]}
    spec["mounts"].append(own)
    bundle.prepare(pod_dir, "c2", spec, [], host_bundle)
    with open(os.path.join(bundle.container_dir(pod_dir, "c2"), "config.json")) as f:
        out = json.load(f)["mounts"]
    assert [m["destination"] for m in out].count("/etc/resolv.conf") == 1
    assert [m for m in out if m["destination"] == "/etc/resolv.conf"][0]["source"] == "/run/kuasar/state/c2/mounts/2"
    assert [m for m in out if m["destination"] == "/etc/hostname"][0]["options"] == ["rbind", "rprivate", "ro"]
    assert "/etc/hosts" not in [m["destination"] for m in out]
    bundle.remove(pod_dir, "c1")
    bundle.remove(pod_dir, "c2")


def test_non_recursive_readonly_volume_keeps_its_submounts_writable(short_tmp):
    """A ``ro`` bind whose host source has a mount below it: the submount keeps its own flags in the
    guest (its own bind beside the volume, its own spec mount after it), as on a node; ``rro`` makes
    it read-only too. Nothing of ours sits on the source's folders: the node can unmount the tmpfs
    and remove its folder while the container is prepared (critest's clean-up does)."""
    host_bundle = os.path.join(short_tmp, "bundle")
    os.makedirs(os.path.join(host_bundle, "rootfs"))
    pod_dir = os.path.join(short_tmp, "pod")
    for cid, options, flag in (("c1", ["rbind", "ro"], "rw"), ("c2", ["rbind", "rro"], "ro")):
        vol = os.path.join(short_tmp, "vol-" + cid)
        os.makedirs(os.path.join(vol, "tmpfs"))
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", os.path.join(vol, "tmpfs")], check=True)
        try:
            spec = json.loads(json.dumps(SPEC))
            spec["mounts"].append({"destination": "/mnt", "type": "bind", "source": vol, "options": options})
            bundle.prepare(pod_dir, cid, spec, [], host_bundle)
            with open(os.path.join(bundle.container_dir(pod_dir, cid), "config.json")) as f:
                out = json.load(f)["mounts"]
            mnt = [m["destination"] for m in out].index("/mnt")
            assert out[mnt]["source"] == "/run/kuasar/state/%s/mounts/2" % cid
            assert out[mnt + 1] == {"destination": "/mnt/tmpfs", "type": "bind",
                                    "source": "/run/kuasar/state/%s/mounts/2.0" % cid,
                                    "options": ["rbind", "rprivate", flag]}
            cdir = bundle.container_dir(pod_dir, cid)
            with open(os.path.join(vol, "tmpfs", "f"), "w") as f:
                f.write("in tmpfs")
            with open(os.path.join(cdir, "mounts", "2.0", "f")) as f:
                assert f.read() == "in tmpfs"
            assert not os.listdir(os.path.join(cdir, "mounts", "2", "tmpfs"))  # the volume alone
            subprocess.run(["umount", "-l", os.path.join(vol, "tmpfs")], check=True)
            shutil.rmtree(vol)  # not busy
        finally:
            subprocess.run(["umount", "-l", os.path.join(vol, "tmpfs")], check=False, stderr=subprocess.DEVNULL)
            bundle.remove(pod_dir, cid)
