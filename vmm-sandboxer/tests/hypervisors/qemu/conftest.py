"""QEMU tests against the real image: the config of a template-capable VM of 256 MiB (``tpl_config``); the
modules here import ``agent_calls``."""
from __future__ import annotations

import os
import sys

import pytest

from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_task.image.build import build, default_outdir

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
IMAGE_DIR = default_outdir()


@pytest.fixture
def tpl_config(short_tmp):
    build(IMAGE_DIR, os.path.join(IMAGE_DIR, ".cache"))
    cfg = config.load(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")).hypervisor
    assert isinstance(cfg, QemuConfig)
    cfg.memory_in_mb = 256
    cfg.kernel_path, cfg.initrd_path = os.path.join(IMAGE_DIR, "vmlinux.bin"), os.path.join(IMAGE_DIR, "kuasar.initrd")
    cfg.template, cfg.template_dir = "auto", os.path.join(short_tmp, "templates")
    return cfg
