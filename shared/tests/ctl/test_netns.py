"""kuasar-ctl ``run/runp --netns PATH``: a network namespace made beforehand (as CNI would) is handed to
the sandboxer and survives stopp/rmp, while bad uses are refused before anything is made.

The Engine talks real gRPC to a Sandbox API server in this process whose sandboxer is the in-memory
fake, recording every Create it receives; the namespaces are real ones made with ``ip netns``.
"""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from typing import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl.engine import Engine, EngineOptions
from kuasar_shared.ctl.metadata import CtlStore
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.sandbox.api import CreateSandbox
from kuasar_shared.sandbox.server import serve_sandbox_api
from kuasar_shared.testing.memory import InMemorySandboxer

NETNS_DIR = "/var/run/netns"


class RecordingSandboxer(InMemorySandboxer):
    """The in-memory fake, keeping every Create request (what the engine handed the sandboxer)."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.created: list[CreateSandbox] = []

    async def create(self, req: CreateSandbox) -> None:
        self.created.append(req)
        await super().create(req)


@pytest.fixture
def netns() -> Iterator[str]:
    """A named network namespace made by this test (``ip netns add``) and deleted afterwards."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces (root and iproute2) cannot exist on this machine")
    name = f"kuasar-test-{uuid.uuid4().hex[:12]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield os.path.join(NETNS_DIR, name)
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.fixture
def recorder(tmp_path) -> RecordingSandboxer:
    return RecordingSandboxer(str(tmp_path / "sandboxer"))


@pytest_asyncio.fixture
async def engine(tmp_path, recorder: RecordingSandboxer) -> AsyncIterator[Engine]:
    server = await serve_sandbox_api(str(tmp_path / "s.sock"), recorder)
    options = EngineOptions("runc", str(tmp_path / "s.sock"), str(tmp_path / "ctl"), str(tmp_path / "images"))
    try:
        async with Engine(options) as eng:
            yield eng
    finally:
        await server.stop(None)


def _pod_config(name: str, network: int = api_pb2.POD) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name=name, namespace="test", uid=uuid.uuid4().hex),
        linux=api_pb2.LinuxPodSandboxConfig(security_context=api_pb2.LinuxSandboxSecurityContext(
            namespace_options=api_pb2.NamespaceOption(network=network))))


def _nothing_made(engine: Engine, recorder: RecordingSandboxer) -> None:
    """A refused runp reached no sandboxer and left no record or pod directory."""
    assert recorder.created == [] and recorder.pod_ids() == []
    assert engine.store.pods() == []
    assert not os.path.isdir(engine.store.pods_dir) or os.listdir(engine.store.pods_dir) == []


async def test_premade_netns_is_passed_to_the_sandboxer_and_kept(engine: Engine, recorder: RecordingSandboxer,
                                                                 netns: str) -> None:
    inode = os.stat(netns).st_ino
    pod_id = await engine.run_pod(_pod_config("with-netns"), netns=netns)
    (created,) = recorder.created
    assert created.id == pod_id and created.netns_path == netns
    record = engine.store.load_pod(pod_id)
    assert record.netns_path == netns and record.netns_owned is False

    await engine.stop_pod(pod_id)
    assert os.path.exists(netns)
    await engine.remove_pod(pod_id)
    assert recorder.pod_ids() == [] and engine.store.pods() == []
    assert os.stat(netns).st_ino == inode  # the very namespace the test made, still there and usable
    subprocess.run(["ip", "netns", "exec", os.path.basename(netns), "true"], check=True)


async def test_rmp_of_a_ready_pod_keeps_the_premade_netns(engine: Engine, netns: str) -> None:
    pod_id = await engine.run_pod(_pod_config("ready"), netns=netns)
    await engine.remove_pod(pod_id)  # no stopp first: rmp stops it itself
    assert engine.store.pods() == [] and os.path.exists(netns)


async def test_without_netns_the_engine_makes_and_removes_its_own(engine: Engine, recorder: RecordingSandboxer,
                                                                  netns: str) -> None:
    pod_id = await engine.run_pod(_pod_config("own"))
    own = engine.store.load_pod(pod_id)
    assert own.netns_owned is True and own.netns_path.startswith(NETNS_DIR + "/") and own.netns_path != netns
    assert recorder.created[0].netns_path == own.netns_path and os.path.exists(own.netns_path)
    await engine.remove_pod(pod_id)
    assert not os.path.exists(own.netns_path) and os.path.exists(netns)


async def test_missing_netns_is_refused_naming_the_path(engine: Engine, recorder: RecordingSandboxer) -> None:
    missing = os.path.join(NETNS_DIR, f"kuasar-absent-{uuid.uuid4().hex[:12]}")
    with pytest.raises(InvalidArgument) as err:
        await engine.run_pod(_pod_config("missing"), netns=missing)
    assert missing in str(err.value) and "no such network namespace" in str(err.value)
    _nothing_made(engine, recorder)


@pytest.mark.parametrize("path, problem", [("/tmp", "not a namespace file"),
                                           ("/proc/self/ns/uts", "not a network namespace")])
async def test_a_path_that_is_no_netns_is_refused(engine: Engine, recorder: RecordingSandboxer, path: str,
                                                  problem: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await engine.run_pod(_pod_config("not-netns"), netns=path)
    assert path in str(err.value) and problem in str(err.value)
    _nothing_made(engine, recorder)


async def test_a_relative_netns_path_is_sent_absolute(engine: Engine, recorder: RecordingSandboxer, netns: str,
                                                      monkeypatch) -> None:
    monkeypatch.chdir(os.path.dirname(netns))
    pod_id = await engine.run_pod(_pod_config("relative"), netns=os.path.basename(netns))
    sent = recorder.created[0].netns_path
    assert os.path.isabs(sent) and os.path.realpath(sent) == os.path.realpath(netns)
    assert engine.store.load_pod(pod_id).netns_path == sent
    await engine.remove_pod(pod_id)
    assert os.path.exists(netns)


async def test_host_network_with_netns_is_refused(engine: Engine, recorder: RecordingSandboxer, netns: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        await engine.run_pod(_pod_config("host", network=api_pb2.NODE), netns=netns)
    assert netns in str(err.value) and "host network" in str(err.value)
    _nothing_made(engine, recorder)
    assert os.path.exists(netns)


async def test_cli_reports_a_missing_netns(tmp_path, engine: Engine, recorder: RecordingSandboxer) -> None:
    missing = os.path.join(NETNS_DIR, f"kuasar-absent-{uuid.uuid4().hex[:12]}")
    pod = tmp_path / "pod.json"
    pod.write_text(json.dumps({"metadata": {"name": "cli", "namespace": "test", "uid": "u1"}}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kuasar_shared.ctl", "-s", "runc", "--endpoint", engine.options.endpoint,
        "--root", engine.options.root, "runp", "--netns", missing, str(pod),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1 and out == b""
    assert err.decode().strip() == f"kuasar-ctl: invalid argument: --netns {missing}: no such network namespace"
    _nothing_made(engine, recorder)


def test_records_from_before_netns_option_own_their_netns(tmp_path) -> None:
    """A pod.json written before ``netns_owned`` existed loads as owning its namespace (rmp removes it)."""
    store = CtlStore(str(tmp_path), "runc")
    os.makedirs(store.pod_dir("old"))
    with open(os.path.join(store.pod_dir("old"), "pod.json"), "w") as f:
        json.dump({"id": "old", "name": "p", "namespace": "ns", "uid": "u", "attempt": 0, "created_at": 1,
                   "config": {}, "sandboxer": "runc", "runtime_handler": "kuasar-runc",
                   "netns_path": "/var/run/netns/cni-old"}, f)
    assert store.load_pod("old").netns_owned is True
