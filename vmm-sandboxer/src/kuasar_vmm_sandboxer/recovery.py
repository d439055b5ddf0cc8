"""Re-attaching a ready pod's VM after a sandboxer restart: the VMM must be the same process (pid + start
time) and answer on its control channel, the relay must attach its agent channel, and the agent must
answer Check within a few seconds. Anything less and the pod is cleaned up."""
from __future__ import annotations

from typing import Any

from kuasar_shared.errors import KuasarError

from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_sandboxer.relay.control import RelayControl
from kuasar_vmm_sandboxer.vm import VM, VMFactory, VMSpec

__all__ = ["Unrecoverable", "reattach", "RECOVER_CHECK"]

RECOVER_CHECK = 3.0


class Unrecoverable(Exception):
    """The pod cannot be re-attached; ``vm`` is a handle to stop what is left of it."""

    def __init__(self, cause: KuasarError, vm: VM) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.vm = vm


async def reattach(factory: VMFactory, relay: RelayControl, guest: GuestClient, spec: VMSpec,
                   record: dict[str, Any]) -> VM:
    """The running VM of ``record``, its agent answering. :raise Unrecoverable: it is not."""
    try:
        vm = await factory.recover(spec, record)
    except KuasarError as err:
        raise Unrecoverable(err, factory.attach(spec, record)) from err
    try:
        await relay.attach(spec.id, vm.agent_address)
        await guest.check(RECOVER_CHECK)
    except KuasarError as err:
        raise Unrecoverable(err, vm) from err
    return vm
