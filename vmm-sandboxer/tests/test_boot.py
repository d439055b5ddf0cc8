"""Booter: a VM whose guest never answers Check within ``boot_timeout_secs`` is killed and booted once
more, then Start fails naming the console log and leaves no VMM behind; the pod is not ready and
Shutdown removes it. Driven through the fake QEMU with a mute agent channel (``fake.silent_agent`` on the
kernel command line); real QEMU does the same in tests/e2e/test_vmm_boot_timeout.py."""
from __future__ import annotations

import logging
import os

import pytest

from kuasar_shared.errors import Unavailable
from kuasar_shared.sandbox import CreateSandbox
from kuasar_vmm_sandboxer import hypervisors
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            continue
    return found


async def test_a_mute_guest_is_booted_twice_then_start_fails_cleanly(relay, fake_hypervisor, caplog):
    cfg = fake_hypervisor("qemu")
    cfg.hypervisor.kernel_params = "fake.silent_agent"
    cfg.hypervisor.boot_timeout_secs = 1
    backend = hypervisors.backends()["qemu"]
    sandboxer = VmmSandboxer(relay.directory, cfg, backend.factory(cfg.hypervisor), backend.hooks(), relay)
    await sandboxer.recover()
    try:
        await sandboxer.create(CreateSandbox(id="slow", config={"metadata": {"name": "slow"}}))
        with caplog.at_level(logging.ERROR), pytest.raises(Unavailable, match=r"within 1 s \(twice\).*console.log"):
            await sandboxer.start("slow")
        assert "not ready (attempt 1)" in caplog.text and "not ready (attempt 2)" in caplog.text
        assert not (await sandboxer.status("slow")).ready
        assert _processes_mentioning(os.path.join(relay.directory, "slow", "qmp.sock")) == []
        await sandboxer.shutdown("slow")
        assert not os.path.exists(os.path.join(relay.directory, "slow"))
    finally:
        await sandboxer.close()
