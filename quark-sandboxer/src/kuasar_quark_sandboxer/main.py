"""``quark-sandboxer``: wiring only — config, kernel, task server, recovery, Sandbox API."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.config import ConfigError
from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.sandbox.server import serve_until_shutdown
from kuasar_shared.sandbox.task_supervisor import TaskProgram, TaskServer, fork_first_task_server, start_task_server

from kuasar_quark_sandboxer import __version__, config
from kuasar_quark_sandboxer.kernel import Kernel
from kuasar_quark_sandboxer.kernels.quark import QuarkKernel
from kuasar_quark_sandboxer.kernels.runsc import RunscKernel
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer

NAME = "quark-sandboxer"
#: the runsc task server's program (see kuasar_shared.sandbox.task_supervisor)
QUARK_TASK_PROGRAM = TaskProgram.find("quark-task", "kuasar_quark_sandboxer.task")
log = logging.getLogger(__name__)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="quark")
    args.dir = os.path.abspath(args.dir)
    try:
        cfg = config.load(args.config)
    except ConfigError as err:
        print(f"{NAME}: {err}", file=sys.stderr)
        return 2
    if cfg.sandbox.log_level:
        args.log_level = cfg.sandbox.log_level
    kernel: Kernel = RunscKernel(args.dir, cfg.runsc) if cfg.sandbox.kernel == "runsc" else QuarkKernel(cfg.quark)
    # while single-threaded: the first task server's zygote (when none is running), which shares our interpreter
    # pages; quark's own kernel has no task server
    zygote = fork_first_task_server(args, QUARK_TASK_PROGRAM) if kernel.uses_task_server else None

    async def serve(ctx: DaemonContext) -> None:
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        task_server: Optional[TaskServer] = None
        if kernel.uses_task_server:
            task_server = await start_task_server(ctx, QUARK_TASK_PROGRAM, zygote=zygote)
        sandboxer = QuarkSandboxer(args.dir, kernel, task_server)
        try:
            await serve_until_shutdown(ctx, sandboxer, f"{kernel.name} pods, tasks at "
                                       f"{task_server.address if task_server else 'each pod'}")
        finally:
            await sandboxer.close()

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
