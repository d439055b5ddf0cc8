"""``quark-task``: wiring only — recover containers, serve the Task API (v2 + v3) for runsc pods."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import build_parser
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.oci.task import OciTaskBackend
from kuasar_shared.task.exits import EXITS_DIR
from kuasar_shared.task.server import serve_task_api

from kuasar_quark_sandboxer import __version__
from kuasar_quark_sandboxer.hooks import RunscHooks

NAME = "quark-task"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(NAME, __version__, listen="/run/kuasar-quark/task.sock", dir="/run/kuasar-quark/.tasks",
                          description="Task API server for every runsc pod (started by quark-sandboxer)")
    parser.add_argument("--pods-dir", default="/run/kuasar-quark", metavar="DIR",
                        help="quark-sandboxer's --dir, holding each pod's sandbox.json")
    args = parser.parse_args(argv)
    args.dir = os.path.abspath(args.dir)
    pods_dir = os.path.abspath(args.pods_dir)

    async def serve(ctx: DaemonContext) -> None:
        hub = StreamingHub()
        backend = OciTaskBackend(args.dir, RunscHooks(pods_dir), hub=hub,
                                 exits=ExitRecorder(os.path.join(pods_dir, EXITS_DIR)))
        await backend.recover()
        await serve_task_api(ctx, args.listen, backend, hub)

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
