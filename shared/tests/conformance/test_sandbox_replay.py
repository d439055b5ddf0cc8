"""Replay of real containerd 2.3.4 Sandbox API traffic (the traces next to this file) through our server.

Two checks per trace: every recorded request decodes with our generated classes into exactly what
containerd sent (rendered like the trace JSON: proto names, int64 strings, Anys expanded), and
the whole flow, fed in ``seq`` order to a real grpc.aio server backed by the InMemorySandboxer,
gets answers in the shape containerd accepted (``ttrpc+unix:///`` address, version 3, CRI state
names, the recorded error codes, a long-held Wait released by Stop or cancelled with containerd).
"""
from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import grpc
import pytest

from kuasar_shared.api.containerd.services.sandbox.v1 import sandbox_pb2
from kuasar_shared.errors import Code, from_code
from kuasar_shared.sandbox.api import CreateSandbox
from kuasar_shared.sandbox.controller import host_platform
from kuasar_shared.sandbox.server import serve_sandbox_api
from kuasar_shared.testing.memory import InMemorySandboxer
from kuasar_shared.testing.traces import Flow, default_conformance_dir, find_flows, render

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFORMANCE_DIR = default_conformance_dir(str(REPO_ROOT))
FLOWS = find_flows(CONFORMANCE_DIR)

_CONTROLLER = sandbox_pb2.DESCRIPTOR.services_by_name["Controller"]
# The sandboxer method each RPC reaches first (where an injected error takes effect).
_SANDBOXER_METHOD = {"Create": "create", "Start": "start", "Platform": "status", "Stop": "stop",
                     "Wait": "wait", "Status": "status", "Shutdown": "shutdown", "Metrics": "metrics",
                     "Update": "status"}
# Codes that our sandboxer produces by itself in these flows; any other recorded error is injected.
_NATURAL = {"OK", "NOT_FOUND", "CANCELLED"}
_WAIT_TIMEOUT = 10.0


def _classes(method: str) -> tuple[Any, Any]:
    desc = _CONTROLLER.methods_by_name[method]
    return getattr(sandbox_pb2, desc.input_type.name), getattr(sandbox_pb2, desc.output_type.name)


def _records() -> list[Any]:
    return [pytest.param(flow.name, r, id="%s-%s-%s" % (flow.name, r["seq"], r["method"]))
            for flow in FLOWS for r in flow.calls("sandbox")]


@pytest.mark.parametrize("flow_name,record", _records())
def test_messages_decode_like_containerd(flow_name: str, record: dict[str, Any]) -> None:
    assert record["service"] == _CONTROLLER.full_name
    request_cls, response_cls = _classes(record["method"])
    for kind, cls in (("request", request_cls), ("response", response_cls)):
        if kind + "_json" not in record:
            continue
        expected = dict(record[kind + "_json"])
        assert expected.pop("@message") == cls.DESCRIPTOR.full_name
        message = cls.FromString(base64.b64decode(record[kind + "_b64"]))
        assert render(message) == expected


class _RecordingSandboxer(InMemorySandboxer):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.created: list[CreateSandbox] = []

    async def create(self, req: CreateSandbox) -> None:
        await super().create(req)
        self.created.append(req)


def _metadata(record: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, value) for key, values in record.get("metadata", {}).items()
            if not key.startswith((":", "grpc-")) and key not in ("content-type", "user-agent")
            for value in values]


def _check_address(reply: Any, sandboxer: InMemorySandboxer) -> None:
    assert reply.address == sandboxer.address and reply.address.startswith("ttrpc+unix:///")
    assert reply.version == 3


def _check_reply(method: str, record: dict[str, Any], request: Any, reply: Any,
                 sandboxer: _RecordingSandboxer) -> None:
    ours = render(reply)
    expected = {k: v for k, v in record["response_json"].items() if k != "@message"}
    if method in ("Start", "Status"):
        unseen = set(ours) - set(expected) - {"info"}
        assert not unseen, "fields containerd never saw: %s" % unseen
        _check_address(reply, sandboxer)
        assert reply.sandbox_id == request.sandbox_id and reply.HasField("created_at")
    if method == "Create":
        assert ours == expected
        created = sandboxer.created[-1]
        options = {k: v for k, v in record["request_json"].get("options", {}).items() if k != "@type"}
        assert created.config == options
        assert created.netns_path == request.netns_path
        assert created.labels == dict(request.sandbox.labels)
        assert {k: t for k, (t, _) in created.extensions.items()} == {
            k: v["@type"] for k, v in record["request_json"]["sandbox"].get("extensions", {}).items()}
    elif method == "Start":
        assert reply.pid > 0
    elif method == "Status":
        assert reply.state == expected["state"]
        assert (reply.pid > 0) == (reply.state == "SANDBOX_READY")
    elif method == "Platform":
        assert reply.platform == host_platform()
        if os.uname().machine == "x86_64":
            assert ours == expected
    elif method == "Wait":
        assert reply.HasField("exited_at")
    else:
        assert ours == expected == {}


async def _replay(flow: Flow, address: str, sandboxer: _RecordingSandboxer) -> None:
    pending: list[tuple[dict[str, Any], Any, Any]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        for record in flow.records:
            if record["api"] == "marker":
                # containerd went away here: its long-held Waits ended as CANCELLED
                for item in [p for p in pending if p[0]["status_code"] == "CANCELLED"]:
                    item[2].cancel()
                    with pytest.raises(asyncio.CancelledError):
                        await item[2]
                    pending.remove(item)
                continue
            if record["api"] != "sandbox":
                continue
            method, status = record["method"], record["status_code"]
            request_cls, response_cls = _classes(method)
            payload = base64.b64decode(record["request_b64"])
            request = request_cls.FromString(payload)
            if status not in _NATURAL:
                sandboxer.fail_next(_SANDBOXER_METHOD[method], request.sandbox_id,
                                    from_code(int(Code[status]), record.get("status_message", "")))
            rpc = channel.unary_unary("/%s/%s" % (_CONTROLLER.full_name, method))
            call = rpc(payload, metadata=_metadata(record), timeout=60)
            if method == "Wait":
                pending.append((record, request, call))
                continue
            reply: Optional[bytes] = None
            try:
                reply = await call
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
                if status == "NOT_FOUND":
                    assert request.sandbox_id in err.details()
            assert code == status, "%s seq %s: got %s" % (method, record["seq"], code)
            if reply is not None:
                _check_reply(method, record, request, response_cls.FromString(reply), sandboxer)
            if method == "Stop":
                for item in [p for p in pending if p[1].sandbox_id == request.sandbox_id]:
                    assert item[0]["status_code"] == "OK"
                    waited = await asyncio.wait_for(item[2], _WAIT_TIMEOUT)
                    _check_reply("Wait", item[0], item[1],
                                 sandbox_pb2.ControllerWaitResponse.FromString(waited), sandboxer)
                    pending.remove(item)
    assert not pending, "Waits still pending at the end of the flow: %s" % [p[0]["seq"] for p in pending]


@pytest.mark.parametrize("flow", FLOWS, ids=[f.name for f in FLOWS])
@pytest.mark.asyncio
async def test_replay_flow(flow: Flow) -> None:
    sock_dir = tempfile.mkdtemp(prefix="kuasar-replay-")
    sandboxer = _RecordingSandboxer(os.path.join(sock_dir, "task"))
    server = await serve_sandbox_api(os.path.join(sock_dir, "sandboxer.sock"), sandboxer)
    try:
        await _replay(flow, server.address, sandboxer)
    finally:
        await server.stop(None)
        shutil.rmtree(sock_dir, ignore_errors=True)
    assert sandboxer.pod_ids() == [], "pods left after the flow's Shutdown"
    assert sandboxer.created, "the flow created no pod"
