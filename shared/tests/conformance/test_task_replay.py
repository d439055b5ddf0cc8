"""Replay containerd 2.3.4's Task API and Streaming calls: decode, compare, and send the exact bytes
through the ttrpc server + TaskService to check what a backend receives and what goes back."""
import asyncio
import base64
import os
from datetime import datetime, timezone

import pytest

from kuasar_shared import errors
from kuasar_shared.api.ttrpc import request_pb2
from kuasar_shared.task import CgroupStats, ExitInfo, ProcessState, Stdio, TaskBackend, TaskService, TaskStatus
from kuasar_shared.testing.traces import default_conformance_dir, find_flows, message_class, render
from kuasar_shared.ttrpc import Server, framing

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONF = default_conformance_dir(REPO)
FLOWS = find_flows(CONF)

TASK_RECORDS = [(f.name, r) for f in FLOWS for r in f.calls("task")]


@pytest.mark.parametrize("flow,record", TASK_RECORDS,
                         ids=[f"{f}-{r['seq']}-{r['method']}" for f, r in TASK_RECORDS])
def test_task_request_decodes_like_containerd(flow, record):
    cls = message_class(record["request_json"]["@message"])
    msg = cls.FromString(base64.b64decode(record["request_b64"]))
    rendered = render(msg)
    expected = {k: v for k, v in record["request_json"].items() if k != "@message"}
    assert rendered == expected


class RecordingBackend(TaskBackend):
    """Answers like a healthy runc task server would and records the converted requests."""

    def __init__(self):
        self.calls = []
        self.exited = datetime(2026, 11, 22, tzinfo=timezone.utc)

    def _rec(self, name, *args):
        self.calls.append((name, args))

    async def create(self, req):
        self._rec("create", req)
        return 4242

    async def start(self, id, exec_id):
        self._rec("start", id, exec_id)
        return 4243 if exec_id else 4242

    async def delete(self, id, exec_id):
        self._rec("delete", id, exec_id)
        return ExitInfo(4243 if exec_id else 4242, 0, self.exited)

    async def exec(self, req):
        self._rec("exec", req)

    async def state(self, id, exec_id):
        self._rec("state", id, exec_id)
        return ProcessState(id, exec_id, "/b", 4242, TaskStatus.RUNNING, Stdio())

    async def kill(self, id, exec_id, signal, all):
        self._rec("kill", id, exec_id, signal, all)
        if exec_id or all:  # in the traces both happen after the process exited
            raise errors.NotFound("process already finished")

    async def wait(self, id, exec_id):
        self._rec("wait", id, exec_id)
        return ExitInfo(4242, 137, self.exited)

    async def pids(self, id):
        return [4242]

    async def stats(self, id):
        self._rec("stats", id)
        return CgroupStats(cpu_total_ns=1000, memory_usage=4096)


@pytest.mark.asyncio
@pytest.mark.parametrize("flow", [f for f in FLOWS if f.name in ("a_runc_fifo", "c_vmm_streaming")],
                         ids=lambda f: f.name)
async def test_task_calls_reach_the_backend_converted(tmp_path, flow):
    backend = RecordingBackend()
    srv = Server(TaskService(backend).services())
    path = str(tmp_path / "task.sock")
    await srv.listen_unix(path)
    reader, writer = await asyncio.open_unix_connection(path)
    sid = 1
    try:
        for rec in flow.calls("task"):
            req = request_pb2.Request(service=rec["service"], method=rec["method"],
                                      payload=base64.b64decode(rec["request_b64"]))
            for k, vs in rec.get("metadata", {}).items():
                for v in vs:
                    req.metadata.add(key=k, value=v)
            writer.write(framing.encode(sid, framing.TYPE_REQUEST, 0, req.SerializeToString()))
            frame = await asyncio.wait_for(framing.read_frame(reader), 5)
            assert frame.stream_id == sid
            sid += 2
            resp = request_pb2.Response.FromString(frame.data)
            if rec.get("status_code", "OK") != "OK":
                assert errors.Code(resp.status.code).name == rec["status_code"]
                continue
            assert resp.status.code == 0, resp.status.message
            out_cls = message_class(rec["response_json"]["@message"])
            out = out_cls.FromString(resp.payload)
            if rec["method"] in ("Create", "Start"):
                assert out.pid > 0
            if rec["method"] == "Wait":
                assert out.exit_status == 137 and out.exited_at.seconds > 0
            if rec["method"] == "Delete":
                assert out.pid > 0 and out.exited_at.seconds > 0
            if rec["method"] == "Connect":
                assert out.task_pid == 4242 and out.version == "3"
            if rec["method"] == "Stats":
                assert out.stats.type_url.endswith("io.containerd.cgroups.v1.Metrics")
    finally:
        writer.close()
        await srv.shutdown()
    create = next(args[0] for name, args in backend.calls if name == "create")
    assert create.namespace == "k8s.io"
    assert create.rootfs[0].type == "overlay" and any(o.startswith("lowerdir=") for o in create.rootfs[0].options)
    assert create.options["task_api_version"] == 3
    assert create.stdio.stdout
    execs = [args[0] for name, args in backend.calls if name == "exec"]
    assert execs and execs[0].spec["args"] == ["echo", "hi"]
    if flow.name == "c_vmm_streaming":
        assert "streaming_id=" in create.stdio.stdout


def test_the_repository_holds_every_flow() -> None:
    """The traces ship with the repository: a checkout without them is broken, not a reason to skip."""
    assert {f.name for f in FLOWS} >= {"a_runc_fifo", "b_hostnet_sharedpid", "c_vmm_streaming", "d_restart",
                                       "d_restart_shim_binary", "e_errors"}, CONF
