"""Fixtures for OCI runtime tests: a busybox bundle for the real runc binary."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from typing import Iterator

import pytest

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
RUNC = shutil.which("runc")


def make_busybox_rootfs(rootfs: str) -> None:
    """A minimal rootfs: static busybox plus one symlink per applet."""
    bin_dir = os.path.join(rootfs, "bin")
    for sub in ("bin", "proc", "sys", "dev", "tmp", "etc", "work"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(bin_dir, "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(bin_dir, applet))


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
    if RUNC is None or not os.path.exists(BUSYBOX) or os.geteuid() != 0:
        pytest.skip("needs root, runc and busybox-static")
    rootfs = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    make_busybox_rootfs(rootfs)
    return rootfs


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
