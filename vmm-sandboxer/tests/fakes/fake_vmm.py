"""What every fake hypervisor shares: reading its command line into options, and running until it is told
to quit (or SIGTERMed) with its sockets served. The checks of each command line stay with its fake."""
from __future__ import annotations

import asyncio
import signal
from typing import Callable, Dict, List, Sequence, Set

from fake_guest import fail

__all__ = ["parse_options", "finisher", "serve_until_done"]


def parse_options(program: str, argv: Sequence[str], values: Set[str], flags: Set[str], invalid: str,
                  no_value: str) -> Dict[str, List[str]]:
    """``argv`` as option -> every value given (``""`` for a flag); exits 1 on an unknown option
    (``invalid % option``) or a value option at the end (``no_value % option``)."""
    options: Dict[str, List[str]] = {}
    i = 0
    while i < len(argv):
        opt = argv[i]
        if opt in flags:
            options.setdefault(opt, []).append("")
            i += 1
        elif opt in values:
            if i + 1 >= len(argv):
                fail(program, no_value % opt)
            options.setdefault(opt, []).append(argv[i + 1])
            i += 2
        else:
            fail(program, invalid % opt)
    return options


def finisher(done: "asyncio.Future[int]", status: int = 0) -> Callable[[], None]:
    """A callback ending the fake with ``status`` (the first end wins)."""
    def finish() -> None:
        if not done.done():
            done.set_result(status)
    return finish


async def serve_until_done(done: "asyncio.Future[int]", servers: List[asyncio.AbstractServer]) -> int:
    """Wait for ``done`` (SIGTERM sets it to 0), close ``servers``, return the exit status."""
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, finisher(done))
    status = await done
    for server in servers:
        server.close()
    return status
