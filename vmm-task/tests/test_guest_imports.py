"""What the guest agent imports, and when: the guest has python3 + protobuf only (no grpc, yaml,
pyroute2), and its boot path up to serving Check leaves the Task services to a background import."""
import asyncio
import subprocess
import sys

import pytest
from google.protobuf import empty_pb2

from kuasar_shared import errors
from kuasar_shared.testing.mux import mux_client
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2
from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_vmm_task import __version__
from kuasar_vmm_task.main import TASK_MODULES, UsageError, build_server, main, parse_args
from kuasar_vmm_task.params import TaskParams

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grpc", "yaml", "pyroute2", "daemon", "tomli"):
            raise ImportError("not in the guest: " + name)
sys.meta_path.insert(0, Block())
import kuasar_vmm_task.main, kuasar_shared.ttrpc.mux
boot_path = set(sys.modules)
for name in kuasar_vmm_task.main.TASK_MODULES:
    __import__(name)
late = ("argparse", "ctypes.util", "google.protobuf.json_format", "kuasar_shared.task", "kuasar_shared.io",
        "kuasar_shared.oci", "kuasar_vmm_task.tasks")
print(sorted(m for m in boot_path if m in late or m.startswith(tuple(p + "." for p in late))))
"""


def test_agent_imports_without_host_only_dependencies():
    """Boot path and task modules import with grpc & co. absent; the boot path stays free of the
    Task API, argparse and ctypes.util (their imports cost seconds of guest boot under TCG)."""
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


LOADED = """
import sys, tempfile
import kuasar_vmm_task.main as m
from kuasar_vmm_task.params import TaskParams
before = "google.protobuf.json_format" in sys.modules
d = tempfile.mkdtemp()
server = m.build_server(TaskParams(template=True), share=d + "/share", ns_dir=d + "/ns", runc_root=d + "/runc")
server.load_task_services()
print(before, all(name in sys.modules for name in m.TASK_MODULES))
"""


def test_registering_the_task_services_imports_what_a_create_needs():
    """A template is saved once its Task services are registered, maybe before the preload thread is done:
    registering them imports every task module, json_format too (a Create with runc Options needs it)."""
    out = subprocess.run([sys.executable, "-c", LOADED], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]


def test_parse_args():
    args = parse_args(["--no-init", "--listen", "/tmp/a.sock", "--port=/dev/vport0p1", "--cmdline", "/c"])
    assert (args.init, args.listen, args.port, args.cmdline) == (False, "/tmp/a.sock", "/dev/vport0p1", "/c")
    defaults = parse_args([])
    assert (defaults.listen, defaults.port, defaults.cmdline) == ("", "", "/proc/cmdline")
    with pytest.raises(UsageError, match="--listen needs a value"):
        parse_args(["--listen"])
    with pytest.raises(UsageError, match="unrecognized argument: --bogus"):
        parse_args(["--bogus"])


def test_main_version_help_and_usage_errors(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"vmm-task {__version__}\n"
    assert main(["--help"]) == 0
    assert "--no-init" in capsys.readouterr().out
    assert main(["--port"]) == 2
    assert "--port needs a value" in capsys.readouterr().err


@pytest.fixture
async def served(tmp_path):
    """(server, client): build_server behind a real host/guest mux pair."""
    server = build_server(TaskParams(), share=str(tmp_path / "share"), ns_dir=str(tmp_path / "ns"),
                          runc_root=str(tmp_path / "runc"))
    async with mux_client(server) as client:
        yield server, client


async def _state(client):
    return await client.call("containerd.task.v3.Task", "State", shim_pb2.StateRequest(id="nosuchctr"),
                             shim_pb2.StateResponse, timeout=10)


async def test_task_call_before_preload_registers_the_task_services(served):
    server, client = served
    assert not server.task_services_loaded
    with pytest.raises(errors.NotFound):  # served by the Task service, not UNIMPLEMENTED
        await _state(client)
    assert server.task_services_loaded
    with pytest.raises(errors.Unimplemented, match="service no.such.Service is not implemented"):
        await client.call("no.such.Service", "X", empty_pb2.Empty(), empty_pb2.Empty, timeout=10)


async def test_first_answer_starts_the_preload(served):
    server, client = served
    assert await client.call("grpc.SandboxService", "Check", sandbox_pb2.CheckRequest(), empty_pb2.Empty,
                             timeout=10) == empty_pb2.Empty()
    for _ in range(1000):
        if server.task_services_loaded:
            break
        await asyncio.sleep(0.01)
    assert server.task_services_loaded  # registered by the preload thread, no Task call made
    assert set(TASK_MODULES) <= set(sys.modules)
    with pytest.raises(errors.NotFound):
        await _state(client)
    with pytest.raises(errors.Unimplemented, match="method containerd.services.streaming.v1.Streaming/Nope"):
        await client.call("containerd.services.streaming.v1.Streaming", "Nope", empty_pb2.Empty(), empty_pb2.Empty,
                          timeout=10)
