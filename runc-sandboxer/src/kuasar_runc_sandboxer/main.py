"""``runc-sandboxer``: wiring only — helper fork, task server, recovery, Sandbox API."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.process_identity import ExitWatch
from kuasar_shared.sandbox.server import serve_until_shutdown
from kuasar_shared.sandbox.task_supervisor import fork_first_task_server, start_task_server

from kuasar_runc_sandboxer import __version__
from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.sandboxer import RUNC_TASK_PROGRAM, RuncSandboxer

NAME = "runc-sandboxer"
log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="runc")
    args.dir = os.path.abspath(args.dir)
    # Fork the namespace-holder helper while still single-threaded (no loop, no grpc threads).
    holders = HolderParent.fork()
    # then the first task server's zygote (when none is running), which shares our interpreter pages
    zygote = fork_first_task_server(args, RUNC_TASK_PROGRAM)

    async def serve(ctx: DaemonContext) -> None:
        task_server = await start_task_server(ctx, RUNC_TASK_PROGRAM, own_children=(holders.pid,), zygote=zygote)

        def helper_exited() -> None:
            # no pod can start without the helper, and it cannot be re-forked from a running loop:
            # exit cleanly (pods keep running) so that the service manager restarts us
            log.error("the sandbox-parent helper exited; shutting down")
            ctx.request_shutdown()
        helper_watch = ExitWatch(holders.pid, helper_exited)
        sandboxer = RuncSandboxer(args.dir, holders, task_server)
        try:
            await serve_until_shutdown(ctx, sandboxer, f"tasks at {task_server.address}")
        finally:
            helper_watch.cancel()
            await sandboxer.close()
            holders.close()

    return run_daemon(NAME, __version__, args, serve, keep_fds=[holders.fileno()])


if __name__ == "__main__":
    sys.exit(main())
