"""``wasm-sandboxer``: wiring only — task server, exit records of orphaned runners, recovery, Sandbox API."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.sandbox.server import serve_until_shutdown
from kuasar_shared.sandbox.task_supervisor import fork_first_task_server, start_task_server

from kuasar_wasm_sandboxer import __version__
from kuasar_wasm_sandboxer.sandboxer import WASM_TASK_PROGRAM, WasmSandboxer

NAME = "wasm-sandboxer"
log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="wasm")
    args.dir = os.path.abspath(args.dir)
    # while single-threaded: the first task server's zygote (when none is running), which shares our interpreter
    # pages; the runners' fork-server is the task server's child, started after it serves
    zygote = fork_first_task_server(args, WASM_TASK_PROGRAM)

    async def serve(ctx: DaemonContext) -> None:
        task_server = await start_task_server(ctx, WASM_TASK_PROGRAM, zygote=zygote)
        sandboxer = WasmSandboxer(args.dir, task_server)
        try:
            await serve_until_shutdown(ctx, sandboxer, f"tasks at {task_server.address}")
        finally:
            await sandboxer.close()

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
