"""Fixtures: a busybox bundle factory and a started runsc pod (real runsc, --platform=ptrace)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid

import pytest

from kuasar_shared.daemon.reaper import set_child_subreaper
from kuasar_shared.sandbox import CreateSandbox

from kuasar_quark_sandboxer.config import RunscConfig
from kuasar_quark_sandboxer.kernels.runsc import RunscKernel
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
RUNSC = shutil.which("runsc")


def make_busybox_rootfs(rootfs: str) -> None:
    """A minimal rootfs: static busybox plus one symlink per applet."""
    for sub in ("bin", "proc", "sys", "dev", "tmp", "etc"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    if RUNSC is None or not os.path.exists(BUSYBOX) or os.geteuid() != 0:
        pytest.skip("needs root, runsc and busybox-static")
    set_child_subreaper()  # runsc helpers re-parent to the test process, as to quark-task
    rootfs = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    make_busybox_rootfs(rootfs)
    return rootfs


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
