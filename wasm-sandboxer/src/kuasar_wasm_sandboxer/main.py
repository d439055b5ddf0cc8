"""``wasm-sandboxer``: wiring only — task server, exit records of orphaned runners, recovery, Sandbox API."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.oci import ExitRecorder
from kuasar_shared.sandbox import serve_sandbox_api
from kuasar_shared.store import PodStore
from kuasar_shared.sandbox.taskserver import EXITS_DIR, TaskServer

from kuasar_wasm_sandboxer import __version__
from kuasar_wasm_sandboxer.sandboxer import WASM_TASK, WasmSandboxer

NAME = "wasm-sandboxer"
log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="wasm")
    args.dir = os.path.abspath(args.dir)

    async def serve(ctx: DaemonContext) -> None:
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        log_file = os.path.join(args.dir, "wasm-task.log") if args.daemon else None
        task_server = await TaskServer.ensure(args.dir, WASM_TASK, args.log_level, log_file)
        task_server.supervise()
        # runners orphaned by a dead wasm-task re-parent to us: keep their exits for its successor
        exits = ExitRecorder(os.path.join(args.dir, EXITS_DIR))
        ctx.reaper.add_listener(exits.listener(lambda pid: pid == task_server.pid))
        sandboxer = WasmSandboxer(args.dir, task_server)
        try:
            await sandboxer.recover()
            server = await serve_sandbox_api(args.listen, sandboxer)
            ctx.ready(f"tasks at {task_server.address}", recovered=len(PodStore(args.dir).ids()))
            try:
                await ctx.shutdown_event.wait()
            finally:
                await server.stop(1.0)
        finally:
            await sandboxer.close()

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
