"""A pod whose Start a sandboxer crash cut short (issue 14), with the crash injected at each step of
Start: the restarted sandboxer rolls it back and forgets it, leaving no process, cgroup or file."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from kuasar_shared.errors import NotFound

from kuasar_quark_sandboxer.config import RunscConfig
from kuasar_quark_sandboxer.kernel import pids_naming
from kuasar_quark_sandboxer.kernels.runsc import RUNSC_ROOT, RunscKernel
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer

#: where the crash happens: (patched target, when) — "before" the call, "after" it returned, or
#: "during" it (the call runs on as an orphan)
STEPS = {
    "cgroup-made": ("kuasar_quark_sandboxer.kernels.runsc.RunscKernel.start", "before"),
    "bundle-written": ("kuasar_shared.oci.OciRuntime.create", "before"),
    "during-runsc-create": ("kuasar_shared.oci.OciRuntime.create", "during"),
    "sandbox-created": ("kuasar_shared.oci.OciRuntime.create", "after"),
    "during-runsc-start": ("kuasar_shared.oci.OciRuntime.start", "during"),
    "sandbox-started": ("kuasar_shared.oci.OciRuntime.start", "after"),
}

CRASHING_SANDBOXER = textwrap.dedent("""
    import asyncio, importlib, os, sys
    from kuasar_shared.sandbox import CreateSandbox
    from kuasar_quark_sandboxer.config import RunscConfig
    from kuasar_quark_sandboxer.kernels.runsc import RunscKernel
    from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer

    directory, pod, cgroup, target, when = sys.argv[1:]
    module, owner, name = target.rsplit(".", 2)
    cls = getattr(importlib.import_module(module), owner)
    original = getattr(cls, name)

    async def crashing(*args, **kwargs):
        if when == "before":
            os._exit(9)
        call = asyncio.ensure_future(original(*args, **kwargs))
        if when == "during":
            await asyncio.sleep(0.2)
        else:
            await call
        os._exit(9)
    setattr(cls, name, crashing)

    async def main():
        sandboxer = QuarkSandboxer(directory, RunscKernel(directory, RunscConfig()), None)
        await sandboxer.create(CreateSandbox(id=pod, config={"linux": {"cgroup_parent": cgroup}}))
        await sandboxer.start(pod)
    asyncio.run(main())
    sys.exit("the crash was not injected")
""")


@pytest.mark.parametrize("step", list(STEPS))
async def test_start_cut_short_is_rolled_back_on_recovery(tmp_path, busybox_rootfs, step) -> None:
    directory = str(tmp_path / "pods")
    os.makedirs(directory)
    pod = "pod-" + uuid.uuid4().hex[:8]
    cgroup = f"/kuasar-cut-{uuid.uuid4().hex[:6]}"
    target, when = STEPS[step]
    crashed = subprocess.run([sys.executable, "-c", CRASHING_SANDBOXER, directory, pod, cgroup, target, when],
                             capture_output=True, text=True, timeout=120)
    assert crashed.returncode == 9, crashed.stderr
    pod_dir = os.path.join(directory, pod)
    assert os.path.exists(os.path.join(pod_dir, "sandbox.json"))
    if step.startswith("sandbox-"):  # what the crash left running: the pod's runsc sandbox and gofer
        assert pids_naming(os.path.join(pod_dir, ""))

    restarted = QuarkSandboxer(directory, RunscKernel(directory, RunscConfig()), None)
    await restarted.recover()
    try:
        with pytest.raises(NotFound):
            await restarted.status(pod)
    finally:
        await restarted.close()
    assert pids_naming(os.path.join(pod_dir, "")) == []
    assert not os.path.exists(pod_dir)
    assert [c for c in os.listdir("/sys/fs/cgroup")
            if os.path.exists(os.path.join("/sys/fs/cgroup", c, cgroup.strip("/")))] == []
    runsc_state = os.path.join(directory, RUNSC_ROOT)
    assert not os.path.isdir(runsc_state) or not [f for f in os.listdir(runsc_state) if pod in f]
