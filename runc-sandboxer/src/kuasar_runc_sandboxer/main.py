"""``runc-sandboxer``: wiring only — helper fork, task server, recovery, Sandbox API."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.oci import ExitRecorder, ExitWatch
from kuasar_shared.sandbox import serve_sandbox_api
from kuasar_shared.store import PodStore
from kuasar_shared.sandbox.taskserver import EXITS_DIR, TaskServer

from kuasar_runc_sandboxer import __version__
from kuasar_runc_sandboxer.holder import HolderParent
from kuasar_runc_sandboxer.sandboxer import RUNC_TASK, RuncSandboxer

NAME = "runc-sandboxer"
log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="runc")
    args.dir = os.path.abspath(args.dir)
    # Fork the namespace-holder helper while still single-threaded (no loop, no grpc threads).
    holders = HolderParent.fork()

    async def serve(ctx: DaemonContext) -> None:
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        log_file = os.path.join(args.dir, "runc-task.log") if args.daemon else None
        task_server = await TaskServer.ensure(args.dir, RUNC_TASK, args.log_level, log_file)
        task_server.supervise()
        # containers orphaned by a dead runc-task re-parent to us: keep their exits for its successor
        exits = ExitRecorder(os.path.join(args.dir, EXITS_DIR))
        ctx.reaper.add_listener(exits.listener(lambda pid: pid in (holders.pid, task_server.pid)))

        def helper_exited() -> None:
            # no pod can start without the helper, and it cannot be re-forked from a running loop:
            # exit cleanly (pods keep running) so that the service manager restarts us
            log.error("the sandbox-parent helper exited; shutting down")
            ctx.request_shutdown()
        helper_watch = ExitWatch(holders.pid, helper_exited)
        sandboxer = RuncSandboxer(args.dir, holders, task_server)
        try:
            await sandboxer.recover()
            server = await serve_sandbox_api(args.listen, sandboxer)
            ctx.ready(f"tasks at {task_server.address}", recovered=len(PodStore(args.dir).ids()))
            try:
                await ctx.shutdown_event.wait()
            finally:
                await server.stop(1.0)
        finally:
            helper_watch.cancel()
            await sandboxer.close()
            holders.close()

    return run_daemon(NAME, __version__, args, serve, keep_fds=[holders.fileno()])


if __name__ == "__main__":
    sys.exit(main())
