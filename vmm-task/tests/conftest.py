"""Fixtures of the vmm-task tests: the real guest image, built once and cached across runs."""
import os
import shutil

import pytest

from kuasar_vmm_task.image.build import build, default_outdir

IMAGE_DIR = default_outdir()


@pytest.fixture(scope="session")
def guest_image():
    """(image dir, stamp record); the build is skipped while its inputs are unchanged."""
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} cannot exist on this machine (not a Debian build host)")
    return IMAGE_DIR, build(IMAGE_DIR, os.path.join(IMAGE_DIR, ".cache"))
