"""Booting a pod's VM to its guest agent, with one retry.

Under emulation a boot occasionally stalls (a lost interrupt early in the kernel); a VM whose agent does
not answer Check within ``boot_timeout_secs`` is killed and started once more, and a second failure
fails Start naming the console log. Each attempt: ``Hooks.pre_start`` -> ``VMFactory.create`` ->
``VM.start`` -> the VMM joins the pod cgroup -> the relay attaches the agent channel -> Check.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

from kuasar_shared.errors import DeadlineExceeded, Unavailable

from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_sandboxer.relay.control import RelayControl
from kuasar_vmm_sandboxer.vm import VM, Hooks, Pids, VMFactory, VMSpec

__all__ = ["Booter"]

log = logging.getLogger(__name__)
_ATTEMPTS = 2


@dataclass
class Booter:
    """What a boot needs besides the pod."""

    factory: VMFactory
    hooks: Hooks
    relay: RelayControl
    timeout: float

    async def boot(self, spec: VMSpec, guest: GuestClient, place: Callable[[Pids], None],
                   timings: dict[str, float], begin: float) -> VM:
        """The VM of ``spec``, its agent answering; ``place`` puts the VM's processes into the pod cgroup.
        ``timings`` gets spawn (from ``begin``), qemu (VMM spawn to relay attached; the key predates the
        other hypervisors and the benchmark reports read it) and agent (spawn to agent ready) in ms.

        :raise Unavailable: no boot reached the agent; other errors as the factory or VM raised them
            (the VM is stopped first).
        """
        for attempt in range(1, _ATTEMPTS + 1):
            vm = self.factory.create(await self.hooks.pre_start(spec))
            spawn = time.monotonic()
            await vm.start()
            try:
                place(await vm.pids())
                await self.relay.attach(spec.id, vm.agent_address)
                attached = time.monotonic()
                await guest.wait_ready(self.timeout)
            except (DeadlineExceeded, Unavailable) as err:
                log.error("sandbox %s: guest agent not ready (attempt %d): %s", spec.id, attempt, err)
                await self.relay.detach(spec.id)
                await vm.stop(force=True)
                if attempt == _ATTEMPTS:
                    raise Unavailable("sandbox %s: the VM did not boot to its agent within %.0f s (twice); "
                                      "see %s" % (spec.id, self.timeout,
                                                  os.path.join(spec.pod_dir, "console.log"))) from err
                continue
            except BaseException:
                await vm.stop(force=True)
                raise
            now = time.monotonic()
            timings.update(spawn=(spawn - begin) * 1000, qemu=(attached - spawn) * 1000, agent=(now - spawn) * 1000)
            return vm
        raise AssertionError("unreachable")
