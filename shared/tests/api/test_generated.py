"""The generated protobuf modules: not stale, and importable on the oldest runtime we support."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
API = os.path.join(REPO, "shared", "src", "kuasar_shared", "api")
DEBIAN_PYTHON = "/usr/bin/python3"


def _modules():
    for root, _, files in os.walk(API):
        for f in files:
            if f.endswith("_pb2.py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.join(REPO, "shared", "src"))
                yield rel[:-3].replace(os.sep, ".")


def test_committed_code_is_up_to_date():
    pytest.importorskip("grpc_tools", reason="grpcio-tools (hack/requirements-test.txt) is not installed")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "proto", "generate.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _has_system_protobuf() -> bool:
    if not os.path.exists(DEBIAN_PYTHON):
        return False
    return subprocess.run([DEBIAN_PYTHON, "-c", "import google.protobuf"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _has_system_protobuf(),
                    reason="the distribution's python3 with python3-protobuf is not installed")
def test_imports_on_distribution_protobuf():
    """Debian 12 ships python3-protobuf 3.21 (runtime 4.21): the generated code must import there."""
    code = ("import sys, importlib, google.protobuf as p; sys.path.insert(0, %r)\n"
            "for m in %r: importlib.import_module(m)\n"
            "from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2\n"
            "assert shim_pb2.CreateTaskRequest(id='x').SerializeToString() == b'\\n\\x01x'\n"
            "print(p.__version__)") % (os.path.join(REPO, "shared", "src"), sorted(_modules()))
    env = {"PATH": "/usr/bin:/bin", "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([DEBIAN_PYTHON, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
