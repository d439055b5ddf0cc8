"""End to end: a guest that does not reach its agent within ``boot_timeout_secs`` is killed and booted
once more; when that fails too, Start fails naming the console log, and nothing of the pod is left.
``boot_timeout_secs = 1`` is shorter than any boot here (~4 s under TCG), so both attempts time out."""
from __future__ import annotations

import json
import os
import uuid

import pytest
from support import Ctl, assert_gone, pids_with, running_sandboxer


@pytest.fixture(scope="module")
def impatient(guest_image):
    with running_sandboxer(guest_image, boot_timeout_secs="1") as sandboxer:
        yield sandboxer


def test_boot_timeout_kills_and_retries_once_then_fails_cleanly(impatient, images, tmp_path):
    pod_cfg = tmp_path / "pod.json"
    pod_cfg.write_text(json.dumps({"metadata": {"name": f"slow-{uuid.uuid4().hex[:6]}", "namespace": "e2e",
                                                "uid": uuid.uuid4().hex}}))
    ctl = Ctl("vmm", impatient.listen, str(tmp_path / "ctl"), images)
    failed = ctl("runp", str(pod_cfg), check=False, timeout=120)
    assert failed.returncode != 0
    assert "did not boot to its agent within 1 s (twice)" in failed.stderr.decode()
    assert "console.log" in failed.stderr.decode()
    with open(impatient.log) as f:
        log = f.read()
    assert "guest agent not ready (attempt 1)" in log and "guest agent not ready (attempt 2)" in log
    assert ctl.out("pods", "-q") == ""

    def leftovers() -> list[str]:
        qemus = set(pids_with("qemu-system")) & set(pids_with(impatient.work))
        pods = [d for d in os.listdir(impatient.dir) if len(d) == 64] if os.path.isdir(impatient.dir) else []
        return [f"qemu {p}" for p in qemus] + [f"pod dir {d}" for d in pods]
    assert_gone(leftovers)
