"""The periodic guest clock sync: one task for every ready pod (upstream syncs each guest every minute)."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Iterable

from kuasar_shared.errors import KuasarError

from kuasar_vmm_sandboxer.guest import GuestClient

__all__ = ["sync_clocks", "CLOCK_INTERVAL"]

log = logging.getLogger(__name__)
CLOCK_INTERVAL = 60.0


async def sync_clocks(guests: Callable[[], Iterable[GuestClient]], interval: float = CLOCK_INTERVAL) -> None:
    """Every ``interval`` seconds, sync the clock of each guest ``guests()`` lists; failures are logged."""
    while True:
        await asyncio.sleep(interval)
        for guest in guests():
            try:
                await guest.sync_clock()
            except KuasarError as err:
                log.warning("sandbox %s: clock sync failed: %s", guest.id, err)
