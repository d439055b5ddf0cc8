"""Fixtures: a busybox bundle for the real runc, and a RuncTaskBackend in a temp directory."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from kuasar_shared.testing.oci import busybox_rootfs_for, fifo_factory

RUNC = shutil.which("runc")


@pytest.fixture
def fifo(tmp_path):
    """``fifo(name) -> path`` of a new FIFO in the test's directory."""
    return fifo_factory(tmp_path)


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    return busybox_rootfs_for(tmp_path_factory, RUNC, "runc", subreaper=True)


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
