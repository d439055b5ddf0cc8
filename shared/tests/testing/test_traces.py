"""Tests of kuasar_shared.testing.traces: loading flows and rendering messages like the traces."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import any_pb2, empty_pb2, timestamp_pb2

from kuasar_shared.api.containerd.runc.options import oci_pb2
from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.api.containerd.types import sandbox_pb2 as types_sandbox_pb2
from kuasar_shared.api.cri.runtime.v1 import api_pb2 as cri_pb2
from kuasar_shared.testing.traces import (ENGINE, ENV_CONFORMANCE_DIR, default_conformance_dir, find_flows,
                                          message_class, render)


def test_render_scalars_maps_enums_and_timestamps() -> None:
    config = cri_pb2.PodSandboxConfig(
        hostname="h", labels={"a": "b"},
        linux=cri_pb2.LinuxPodSandboxConfig(security_context=cri_pb2.LinuxSandboxSecurityContext(
            namespace_options=cri_pb2.NamespaceOption(pid=cri_pb2.CONTAINER),
            run_as_user=cri_pb2.Int64Value(value=1000))))
    assert render(config) == {"hostname": "h", "labels": {"a": "b"}, "linux": {"security_context": {
        "namespace_options": {"pid": "CONTAINER"}, "run_as_user": {"value": "1000"}}}}
    sandbox = types_sandbox_pb2.Sandbox(created_at=timestamp_pb2.Timestamp(seconds=1, nanos=5000))
    assert render(sandbox) == {"created_at": "1970-01-01T00:00:01.000005Z"}
    assert render(sandbox_pb2.ControllerStopRequest()) == {}


def test_render_any_known_json_and_opaque() -> None:
    options = oci_pb2.Options(task_api_address="ttrpc+unix:///t.sock", task_api_version=3)
    known = any_pb2.Any(type_url="containerd.runc.v1.Options", value=options.SerializeToString())
    sandbox = types_sandbox_pb2.Sandbox()
    sandbox.extensions["known"].CopyFrom(known)
    sandbox.extensions["json"].CopyFrom(any_pb2.Any(type_url="example.com/Thing", value=b'{"x": [1]}'))
    sandbox.extensions["opaque"].CopyFrom(any_pb2.Any(type_url="example.com/Blob", value=b"\x00\x01"))
    sandbox.extensions["empty"].CopyFrom(any_pb2.Any(type_url="type.googleapis.com/google.protobuf.Empty",
                                                     value=empty_pb2.Empty().SerializeToString()))
    assert render(sandbox)["extensions"] == {
        "known": {"@type": "containerd.runc.v1.Options", "task_api_address": "ttrpc+unix:///t.sock",
                  "task_api_version": 3},
        "json": {"@type": "example.com/Thing", "value_b64": "eyJ4IjogWzFdfQ==", "@json": {"x": [1]}},
        "opaque": {"@type": "example.com/Blob", "value_b64": "AAE="},
        "empty": {"@type": "type.googleapis.com/google.protobuf.Empty"},
    }


def test_message_class() -> None:
    assert message_class("containerd.services.sandbox.v1.ControllerStartRequest") is \
        sandbox_pb2.ControllerStartRequest


def test_find_flows_sorts_records(tmp_path: Path) -> None:
    flow = tmp_path / ENGINE / "x_flow"
    flow.mkdir(parents=True)
    (tmp_path / ENGINE / "inputs").mkdir()
    lines = [{"seq": 10, "api": "sandbox"}, {"seq": 2, "api": "marker", "note": "n"}, {"seq": 3, "api": "task"}]
    (flow / "calls.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    (flows,) = find_flows(str(tmp_path))
    assert flows.name == "x_flow" and [r["seq"] for r in flows.records] == [2, 3, 10]
    assert [r["seq"] for r in flows.calls("sandbox")] == [10]


def test_default_conformance_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_CONFORMANCE_DIR, raising=False)
    assert default_conformance_dir("/repo") == "/repo/shared/tests/conformance"
    monkeypatch.setenv(ENV_CONFORMANCE_DIR, "/elsewhere")
    assert default_conformance_dir("/repo") == "/elsewhere"
