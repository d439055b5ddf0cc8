"""kuasar-ctl metadata store: records round-trip, ids resolve by unique prefix."""
from __future__ import annotations

import os

import pytest

from kuasar_shared.ctl.metadata import ContainerRecord, CtlStore, PodRecord, resolve_prefix
from kuasar_shared.errors import InvalidArgument, NotFound

IDS = ["abc123", "abd456", "f00"]


def test_prefix_exact_and_unique():
    assert resolve_prefix("abc", IDS, "pod") == "abc123"
    assert resolve_prefix("f00", IDS, "pod") == "f00"


def test_prefix_ambiguous():
    with pytest.raises(InvalidArgument, match="ambiguous"):
        resolve_prefix("ab", IDS, "pod")


def test_prefix_unknown_and_empty():
    with pytest.raises(NotFound, match="container 'zz' not found"):
        resolve_prefix("zz", IDS, "container")
    with pytest.raises(InvalidArgument):
        resolve_prefix("", IDS, "pod")


def _pod(pid: str, created: int) -> PodRecord:
    return PodRecord(id=pid, name="p", namespace="ns", uid="u", attempt=0, created_at=created, config={},
                     sandboxer="runc", runtime_handler="kuasar-runc")


def test_round_trip_and_listing(tmp_path):
    store = CtlStore(str(tmp_path), "runc")
    store.save_pod(_pod("bbb", 2))
    store.save_pod(_pod("aaa", 1))
    ctr = ContainerRecord(id="c1", pod_id="aaa", name="x", attempt=0, image="busybox", image_path="/i",
                          created_at=3, io_type="fifo")
    store.save_container(ctr)
    assert [p.id for p in store.pods()] == ["aaa", "bbb"]
    assert store.load_container("c1") == ctr
    assert [c.id for c in store.containers("aaa")] == ["c1"] and store.containers("bbb") == []
    assert store.resolve_pod("b") == "bbb"
    store.remove_container("c1")
    assert store.container_ids() == []


def test_corrupt_record_is_skipped(tmp_path):
    store = CtlStore(str(tmp_path), "runc")
    store.save_pod(_pod("good", 1))
    os.makedirs(store.pod_dir("bad"))
    with open(os.path.join(store.pod_dir("bad"), "pod.json"), "w") as f:
        f.write("{torn")
    assert [p.id for p in store.pods()] == ["good"]


def test_hostile_ids_never_reach_paths(tmp_path):
    store = CtlStore(str(tmp_path), "runc")
    for bad in ("../etc", "a/b", "x\0"):
        with pytest.raises(InvalidArgument):
            store.container_dir(bad)
