"""The sandboxer's handles on the VMs of ready pods: each VM object with its exit watch and the
forwarding of its guest's events, and the clean-ups that follow an unexpected VMM exit.

Resource handling: :meth:`RunningVMs.close` drops the watches, cancels the clean-ups and the event
forwarding; the VMs keep running (a restarted sandboxer re-adopts them).
"""
from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, Optional, Set

from kuasar_vmm_sandboxer.events import EventForwarder
from kuasar_vmm_sandboxer.guest import GuestClient
from kuasar_vmm_sandboxer.vm import VM

__all__ = ["RunningVMs"]


class RunningVMs:
    def __init__(self, events: Optional[EventForwarder]) -> None:
        self.events = events
        self._vms: dict[str, VM] = {}
        self._tasks: Set["asyncio.Task[None]"] = set()

    def add(self, sandbox_id: str, vm: VM, guest: GuestClient, on_exit: Callable[[int], None]) -> None:
        """Track ``vm``: ``on_exit(status)`` once its VMM exits, guest events forwarded meanwhile."""
        self._vms[sandbox_id] = vm
        vm.watch(on_exit)
        if self.events is not None:
            self.events.start(sandbox_id, guest)

    def pop(self, sandbox_id: str) -> Optional[VM]:
        """Stop tracking the pod's VM (its exit watch is dropped: a stop is not a crash)."""
        vm = self._vms.pop(sandbox_id, None)
        if vm is not None:
            vm.close()
        return vm

    async def release(self, sandbox_id: str) -> None:
        """Stop forwarding the pod's guest events."""
        if self.events is not None:
            await self.events.stop(sandbox_id)

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a clean-up owned by this object (cancelled by :meth:`close`)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        for vm in self._vms.values():
            vm.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.events is not None:
            await self.events.close()
