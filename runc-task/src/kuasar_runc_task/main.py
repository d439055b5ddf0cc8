"""``runc-task``: wiring only — recover containers, serve the Task API (v2 + v3) on a unix socket."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import build_parser
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import EXITS_DIR
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.server import serve_task_api

from kuasar_runc_task import __version__
from kuasar_runc_task.backend import RuncTaskBackend

NAME = "runc-task"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(NAME, __version__, listen="/run/kuasar-runc/task.sock", dir="/run/kuasar-runc/tasks",
                          description="Task API server for every runc pod (started by runc-sandboxer)")
    parser.add_argument("--pods-dir", default="", metavar="DIR",
                        help="runc-sandboxer's --dir, where pods pin their namespaces")
    parser.add_argument("--runtime", default="runc", metavar="BINARY", help="OCI runtime (default: runc)")
    args = parser.parse_args(argv)
    args.dir = os.path.abspath(args.dir)

    async def serve(ctx: DaemonContext) -> None:
        hub = StreamingHub()
        exits = ExitRecorder(os.path.join(args.pods_dir, EXITS_DIR)) if args.pods_dir else None
        backend = RuncTaskBackend(args.dir, pods_dir=args.pods_dir, binary=args.runtime, hub=hub, exits=exits)
        await backend.recover()
        await serve_task_api(ctx, args.listen, backend, hub)

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
