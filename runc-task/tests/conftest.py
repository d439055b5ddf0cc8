"""Fixtures: a busybox bundle for the real runc, and a RuncTaskBackend in a temp directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from kuasar_shared.daemon.reaper import set_child_subreaper

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
RUNC = shutil.which("runc")


def make_busybox_rootfs(rootfs: str) -> None:
    """A minimal rootfs: static busybox plus one symlink per applet."""
    for sub in ("bin", "proc", "sys", "dev", "tmp", "etc", "work"):
        os.makedirs(os.path.join(rootfs, sub), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(rootfs, "bin", "busybox"))
    applets = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", os.path.join(rootfs, "bin", applet))


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    if RUNC is None or not os.path.exists(BUSYBOX) or os.geteuid() != 0:
        pytest.skip("needs root, runc and busybox-static")
    set_child_subreaper()  # container inits re-parent to the test process, as to runc-task
    rootfs = str(tmp_path_factory.mktemp("busybox") / "rootfs")
    make_busybox_rootfs(rootfs)
    return rootfs


@pytest.fixture
def bundle_factory(tmp_path, busybox_rootfs: str):
    """``bundle_factory(name, args, copy_rootfs=True, **spec updates) -> bundle path``."""
    def factory(name: str, args: list[str], copy_rootfs: bool = True, **updates) -> str:
        bundle = str(tmp_path / "bundles" / name)
        os.makedirs(bundle)
        subprocess.run([RUNC, "spec", "--bundle", bundle], check=True)
        if copy_rootfs:
            shutil.copytree(busybox_rootfs, os.path.join(bundle, "rootfs"), symlinks=True)
        with open(os.path.join(bundle, "config.json")) as handle:
            spec = json.load(handle)
        spec["process"].update(terminal=False, args=args)
        spec["root"]["readonly"] = False
        spec.update(updates)
        with open(os.path.join(bundle, "config.json"), "w") as handle:
            json.dump(spec, handle)
        return bundle
    return factory


@pytest.fixture
def fifo_factory(tmp_path):
    """``fifo_factory(name) -> path`` of a new FIFO."""
    def factory(name: str) -> str:
        path = str(tmp_path / name)
        os.mkfifo(path)
        return path
    return factory
