"""Quark kernel: upstream's command line; a real pod only where a ``quark`` binary is installed."""
from __future__ import annotations

import shutil

import pytest

from kuasar_shared.sandbox import CreateSandbox

from kuasar_quark_sandboxer.config import QuarkConfig
from kuasar_quark_sandboxer.kernels.quark import QuarkKernel, quark_argv
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer


def test_upstream_command_line() -> None:
    assert quark_argv("/usr/local/bin/quark", "/run/kuasar-quark/p1", "p1") == [
        "/usr/local/bin/quark", "-r", "/run/kuasar-quark/p1/sandbox", "sandbox",
        "--task-socket", "/run/kuasar-quark/p1/quark-task.sock", "--id", "p1",
        "--pid-file", "/run/kuasar-quark/p1/pid"]


@pytest.mark.skipif(shutil.which("quark") is None,
                    reason="no quark binary: Quark is not packaged for any distribution, so it cannot exist on "
                           "this machine")
async def test_real_quark_pod(tmp_path) -> None:
    sandboxer = QuarkSandboxer(str(tmp_path), QuarkKernel(QuarkConfig(path=shutil.which("quark"))), None)
    await sandboxer.create(CreateSandbox(id="quark-pod"))
    status = await sandboxer.start("quark-pod")
    assert status.ready and status.address == f"ttrpc+unix://{tmp_path}/quark-pod/quark-task.sock"
    await sandboxer.shutdown("quark-pod")
