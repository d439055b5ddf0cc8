"""Fixtures for OCI runtime tests: a busybox bundle for the real runc binary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from typing import Iterator

import pytest

from kuasar_shared.testing.oci import busybox_rootfs_for

RUNC = shutil.which("runc")


def make_bundle(bundle: str, rootfs_source: str, args: list[str]) -> dict:
    """Write a runc default spec running ``args`` with ``rootfs`` copied from ``rootfs_source``."""
    os.makedirs(bundle, exist_ok=True)
    subprocess.run([RUNC or "runc", "spec", "--bundle", bundle], check=True)
    shutil.copytree(rootfs_source, os.path.join(bundle, "rootfs"), symlinks=True)
    with open(os.path.join(bundle, "config.json")) as handle:
        spec = json.load(handle)
    spec["process"]["terminal"] = False
    spec["process"]["args"] = args
    spec["root"]["readonly"] = False
    with open(os.path.join(bundle, "config.json"), "w") as handle:
        json.dump(spec, handle)
    return spec


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_rootfs_for(tmp_path_factory, RUNC, "runc")


@pytest.fixture
def runtime_root(tmp_path) -> Iterator[str]:
    root = str(tmp_path / "runc-root")
    yield root
    if os.path.isdir(root):
        for name in os.listdir(root):
            subprocess.run([RUNC or "runc", "--root", root, "delete", "--force", name], check=False)


@pytest.fixture
def bundle_factory(tmp_path, busybox_rootfs: str):
    """``bundle_factory(name, args) -> (bundle path, spec)``."""
    def factory(name: str, args: list[str]) -> tuple[str, dict]:
        bundle = str(tmp_path / name)
        return bundle, make_bundle(bundle, busybox_rootfs, args)
    return factory


@pytest.fixture
def cid() -> str:
    return "oci-test-" + uuid.uuid4().hex[:8]
