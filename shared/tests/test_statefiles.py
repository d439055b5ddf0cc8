"""store: atomic JSON writes, corrupt-file detection, the per-pod directory."""
from __future__ import annotations

import json
import os
import stat

import pytest

from kuasar_shared.errors import Internal, InvalidArgument, NotFound
from kuasar_shared.statefiles import CorruptState, PodStore, read_json, write_json_atomic


def test_write_then_read_roundtrip(tmp_path) -> None:
    path = str(tmp_path / "s.json")
    write_json_atomic(path, {"id": "p1", "n": [1, 2]})
    assert read_json(path) == {"id": "p1", "n": [1, 2]}
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_rewrite_replaces_and_leaves_no_temp_files(tmp_path) -> None:
    path = str(tmp_path / "s.json")
    for i in range(5):
        write_json_atomic(path, {"i": i})
    assert read_json(path) == {"i": 4}
    assert os.listdir(tmp_path) == ["s.json"]


def test_durable_write_fsyncs_file_and_directory_and_a_step_write_does_not(tmp_path, monkeypatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = str(tmp_path / "state.json")
    write_json_atomic(path, {"v": 1})
    assert len(synced) == 2
    PodStore(str(tmp_path)).save("pod-1", {"v": 2}, durable=False)
    write_json_atomic(path, {"v": 3}, durable=False)
    assert len(synced) == 2
    assert read_json(path) == {"v": 3} and PodStore(str(tmp_path)).load("pod-1") == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["pod-1", "state.json"]


def test_unserializable_object_keeps_old_file(tmp_path) -> None:
    path = str(tmp_path / "s.json")
    write_json_atomic(path, {"ok": True})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert read_json(path) == {"ok": True}
    assert os.listdir(tmp_path) == ["s.json"]


def test_write_into_missing_directory_fails_cleanly(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        write_json_atomic(str(tmp_path / "nope" / "s.json"), {})


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"), (b"  \n", "empty"), (b'{"id": "p1", "sta', "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"), (b"{]", "invalid JSON"),
])
def test_torn_or_invalid_file_is_corrupt_state(tmp_path, content: bytes, reason: str) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(content)
    with pytest.raises(CorruptState) as info:
        read_json(str(path))
    assert isinstance(info.value, Internal)
    assert info.value.path == str(path)
    assert reason in info.value.reason
    assert str(path) in str(info.value)


def test_missing_file_is_file_not_found(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        read_json(str(tmp_path / "absent.json"))


def test_pod_store_save_load_ids(tmp_path) -> None:
    store = PodStore(str(tmp_path))
    store.save("pod-b", {"id": "pod-b"})
    store.save("pod-a", {"id": "pod-a"})
    assert store.ids() == ["pod-a", "pod-b"]
    assert store.load("pod-a") == {"id": "pod-a"}
    assert json.loads((tmp_path / "pod-b" / "sandbox.json").read_text()) == {"id": "pod-b"}
    assert stat.S_IMODE(os.stat(tmp_path / "pod-a").st_mode) == 0o700


def test_pod_store_rejects_hostile_ids(tmp_path) -> None:
    store = PodStore(str(tmp_path / "root"))
    for bad in ("../escape", "a/b", "..", "x\0"):
        with pytest.raises(InvalidArgument):
            store.save(bad, {})
        with pytest.raises(InvalidArgument):
            store.load(bad)
    assert not (tmp_path / "escape").exists()


def test_pod_store_reports_invalid_directories_and_skips_files(tmp_path) -> None:
    (tmp_path / "good").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "bad name").mkdir()
    (tmp_path / "file.txt").write_text("x")
    os.symlink("/etc", tmp_path / "link")
    store = PodStore(str(tmp_path))
    assert store.ids() == ["good"]
    assert [os.path.basename(p) for p in store.rejected] == ["bad name"]  # hidden entries are our own state


def test_pod_store_missing_root_and_unknown_pod(tmp_path) -> None:
    store = PodStore(str(tmp_path / "absent"))
    assert store.ids() == []
    with pytest.raises(NotFound):
        store.load("p1")


def test_pod_store_corrupt_file_is_reported_per_pod(tmp_path) -> None:
    store = PodStore(str(tmp_path))
    store.save("ok", {"id": "ok"})
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "sandbox.json").write_text('{"id": "to')
    results = {}
    for pod in store.ids():
        try:
            results[pod] = store.load(pod)
        except CorruptState as err:
            results[pod] = err.reason
    assert results["ok"] == {"id": "ok"}
    assert "invalid JSON" in results["torn"]


def test_pod_store_remove(tmp_path) -> None:
    store = PodStore(str(tmp_path))
    store.save("p1", {"id": "p1"})
    (tmp_path / "p1" / "sub").mkdir()
    store.remove("p1")
    assert not (tmp_path / "p1").exists()
    store.remove("p1")  # idempotent
