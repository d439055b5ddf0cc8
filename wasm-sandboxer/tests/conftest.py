"""Fixtures: test modules built at test time, wasm rootfs and bundles, FIFOs, cgroup clean-up checks."""
from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from typing import Any, Optional

import pytest

from kuasar_shared.testing.oci import fifo_factory

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from wasm_helpers import CLANG, build_modules  # noqa: E402

SANDBOX_ID_ANNOTATION = "io.kubernetes.cri.sandbox-id"


@pytest.fixture
def fifo(tmp_path):
    """``fifo(name) -> path`` of a new FIFO in the test's directory."""
    return fifo_factory(tmp_path)


@pytest.fixture(scope="session")
def modules(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    if CLANG is None or not os.path.exists("/usr/lib/wasm32-wasi/libc.a"):
        pytest.skip("needs clang, lld, wasi-libc and libclang-rt-dev-wasm32 (hack/setup.sh installs them)")
    return build_modules(str(tmp_path_factory.mktemp("modules")))


@pytest.fixture
def rootfs_factory(tmp_path, modules):
    """``rootfs_factory(name) -> path``: /bin/<module>, /data/hello.txt, /home/note.txt (for a cwd), links out."""
    def factory(name: str = "rootfs") -> str:
        root = str(tmp_path / name)
        os.makedirs(os.path.join(root, "bin"))
        for module, path in modules.items():
            shutil.copy(path, os.path.join(root, "bin", module))
        os.makedirs(os.path.join(root, "data"))
        with open(os.path.join(root, "data", "hello.txt"), "w") as handle:
            handle.write("hello from the rootfs\n")
        os.makedirs(os.path.join(root, "home"))
        with open(os.path.join(root, "home", "note.txt"), "w") as handle:
            handle.write("note in cwd\n")
        os.symlink("/etc/passwd", os.path.join(root, "bin", "escape.wasm"))
        os.symlink("../../../../../../etc/passwd", os.path.join(root, "bin", "up.wasm"))
        return root
    return factory


@pytest.fixture
def bundle_factory(tmp_path, rootfs_factory):
    """``bundle_factory(args, sandbox_id="", env=(), cwd="/", mounts=(), memory=0, cgroups_path="")``."""
    def factory(args: list[str], sandbox_id: str = "", env: tuple[str, ...] = (), cwd: str = "/",
                mounts: tuple[dict[str, Any], ...] = (), memory: int = 0, cgroups_path: str = "",
                rootfs: Optional[str] = None) -> str:
        bundle = str(tmp_path / ("bundle-" + uuid.uuid4().hex[:8]))
        os.makedirs(bundle)
        root = rootfs or rootfs_factory(os.path.basename(bundle) + "-rootfs")
        spec: dict[str, Any] = {
            "ociVersion": "1.1.0", "root": {"path": root},
            "process": {"args": list(args), "env": ["PATH=/bin", *env], "cwd": cwd},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}, *mounts],
            "annotations": {SANDBOX_ID_ANNOTATION: sandbox_id} if sandbox_id else {},
            "linux": {"resources": {"memory": {"limit": memory}} if memory else {}},
        }
        if cgroups_path:
            spec["linux"]["cgroupsPath"] = cgroups_path
        with open(os.path.join(bundle, "config.json"), "w") as handle:
            json.dump(spec, handle)
        return bundle
    return factory
