"""Spec helpers on plain dicts and a bundle directory."""
from __future__ import annotations

import json
import os

import pytest

from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.oci import (clamp_oom_score_adj, drop_hostname_if_shared_uts, load_spec, namespace_path,
                               own_oom_score_adj, replace_proc_ns_paths, rootfs_path, save_spec, set_cgroups_path,
                               set_namespace_path)


def _spec() -> dict:
    return {"hostname": "ctr", "process": {"args": ["sh"], "oomScoreAdj": -998},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/0/ns/net"},
                                     {"type": "ipc", "path": "/proc/0/ns/ipc"},
                                     {"type": "uts", "path": "/proc/42/ns/uts"}, {"type": "mount"}]}}


def test_replace_proc_ns_paths_only_touches_the_given_pid() -> None:
    spec = _spec()
    done = replace_proc_ns_paths(spec, 0, {"network": "/pods/p/ns/net", "ipc": "/pods/p/ns/ipc",
                                           "uts": "/pods/p/ns/uts"})
    assert sorted(done) == ["ipc", "network"]
    assert namespace_path(spec, "network") == "/pods/p/ns/net"
    assert namespace_path(spec, "uts") == "/proc/42/ns/uts"
    assert namespace_path(spec, "pid") == ""
    assert namespace_path(spec, "cgroup") is None


def test_set_namespace_path_adds_or_replaces() -> None:
    spec = _spec()
    set_namespace_path(spec, "pid", "/pods/p/ns/pid")
    set_namespace_path(spec, "cgroup", "/x")
    assert namespace_path(spec, "pid") == "/pods/p/ns/pid"
    assert namespace_path(spec, "cgroup") == "/x"


def test_hostname_dropped_only_when_joining_uts() -> None:
    spec = _spec()
    assert drop_hostname_if_shared_uts(spec)
    assert "hostname" not in spec
    private = {"hostname": "ctr", "linux": {"namespaces": [{"type": "uts"}]}}
    assert not drop_hostname_if_shared_uts(private)
    assert private["hostname"] == "ctr"


def test_oom_score_adj_never_below_ours() -> None:
    process = {"oomScoreAdj": -998}
    assert clamp_oom_score_adj(process, floor=-500)
    assert process["oomScoreAdj"] == -500
    process = {"oomScoreAdj": 100}
    assert not clamp_oom_score_adj(process, floor=-500)
    assert process["oomScoreAdj"] == 100
    assert not clamp_oom_score_adj({}, floor=0)
    process = {"oomScoreAdj": own_oom_score_adj() - 1}
    assert clamp_oom_score_adj(process)
    assert process["oomScoreAdj"] == own_oom_score_adj()


def test_cgroups_path_and_rootfs(tmp_path) -> None:
    spec: dict = {}
    set_cgroups_path(spec, "/pod/ctr")
    assert spec["linux"]["cgroupsPath"] == "/pod/ctr"
    assert rootfs_path("/b", {"root": {"path": "rootfs"}}) == "/b/rootfs"
    assert rootfs_path("/b", {"root": {"path": "/abs"}}) == "/abs"
    assert rootfs_path("/b", {}) == "/b/rootfs"


def test_load_and_save_roundtrip(tmp_path) -> None:
    bundle = str(tmp_path)
    with pytest.raises(NotFound):
        load_spec(bundle)
    save_spec(bundle, _spec())
    assert load_spec(bundle) == _spec()
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        handle.write("[1, 2")
    with pytest.raises(InvalidArgument):
        load_spec(bundle)
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump([1], handle)
    with pytest.raises(InvalidArgument):
        load_spec(bundle)
