"""Fixtures: a busybox bundle factory and a started runsc pod (real runsc, --platform=ptrace)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from kuasar_shared.sandbox import CreateSandbox
from kuasar_shared.testing.oci import busybox_rootfs_for, fifo_factory

from kuasar_quark_sandboxer.config import RunscConfig
from kuasar_quark_sandboxer.kernels.runsc import RunscKernel
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer

RUNSC = shutil.which("runsc")


@pytest.fixture
def fifo(tmp_path):
    """``fifo(name) -> path`` of a new FIFO in the test's directory."""
    return fifo_factory(tmp_path)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_rootfs_for(tmp_path_factory, RUNSC, "runsc", subreaper=True)


@pytest.fixture
def bundle_factory(tmp_path, busybox_rootfs: str):
    """``bundle_factory(name, args, sandbox_id, mounts=()) -> bundle path`` (a CRI-like container spec)."""
    def factory(name: str, args: list[str], sandbox_id: str, mounts: tuple = ()) -> str:
        bundle = str(tmp_path / "bundles" / name)
        os.makedirs(bundle)
        subprocess.run([RUNSC, "spec", "--bundle", bundle], check=True)
        shutil.copytree(busybox_rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
        with open(os.path.join(bundle, "config.json")) as handle:
            spec = json.load(handle)
        spec["process"].update(terminal=False, args=args)
        spec["root"]["readonly"] = False
        spec["mounts"] += [{"destination": dst, "source": src, "type": "bind", "options": ["rbind", "rw"]}
                           for dst, src in mounts]
        spec["annotations"] = {"io.kubernetes.cri.container-type": "container",
                               "io.kubernetes.cri.sandbox-id": sandbox_id}
        with open(os.path.join(bundle, "config.json"), "w") as handle:
            json.dump(spec, handle)
        return bundle
    return factory


@pytest.fixture
async def runsc_pods(tmp_path, busybox_rootfs):
    """A QuarkSandboxer on runsc without a task server (tests drive the task backend themselves)."""
    directory = str(tmp_path / "pods")
    os.makedirs(directory)
    sandboxer = QuarkSandboxer(directory, RunscKernel(directory, RunscConfig()), None)
    yield sandboxer
    for sandbox_id in [pod.id for pod in sandboxer.pods]:
        await sandboxer.shutdown(sandbox_id)
    await sandboxer.close()


@pytest.fixture
async def pod(runsc_pods) -> str:
    """The id of a started runsc pod."""
    sandbox_id = "pod-" + uuid.uuid4().hex[:8]
    await runsc_pods.create(CreateSandbox(id=sandbox_id))
    await runsc_pods.start(sandbox_id)
    return sandbox_id
