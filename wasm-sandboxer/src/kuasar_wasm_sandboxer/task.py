"""``wasm-task``: wiring only — recover containers, start the fork-server, serve the Task API (v2 + v3)."""
from __future__ import annotations

import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.args import build_parser
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.exits import EXITS_DIR
from kuasar_shared.task.server import serve_task_api

from kuasar_wasm_sandboxer import __version__
from kuasar_wasm_sandboxer.backend import WasmTaskBackend
from kuasar_wasm_sandboxer.cache import DEFAULT_MAX_BYTES
from kuasar_wasm_sandboxer.runners import ForkServer

NAME = "wasm-task"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser(NAME, __version__, listen="/run/kuasar-wasm/task.sock", dir="/run/kuasar-wasm/.tasks",
                          description="Task API server for every wasm pod (started by wasm-sandboxer)")
    parser.add_argument("--pods-dir", default="", metavar="DIR", help="wasm-sandboxer's --dir (pod records)")
    parser.add_argument("--cache-dir", default="", metavar="DIR",
                        help="compiled-module cache (default: <dir>/cache; 'off' disables it)")
    parser.add_argument("--cache-size", type=int, default=DEFAULT_MAX_BYTES, metavar="BYTES",
                        help="bound of the compiled-module cache (default: %(default)s)")
    args = parser.parse_args(argv)
    args.dir = os.path.abspath(args.dir)
    cache_dir = "" if args.cache_dir == "off" else os.path.abspath(args.cache_dir or os.path.join(args.dir, "cache"))

    async def serve(ctx: DaemonContext) -> None:
        hub = StreamingHub()
        exits = ExitRecorder(os.path.join(args.pods_dir, EXITS_DIR)) if args.pods_dir else None
        forkserver = ForkServer(cache_dir, args.cache_size)
        backend = WasmTaskBackend(args.dir, forkserver, pods_dir=args.pods_dir, hub=hub, exits=exits)
        await backend.recover()
        forkserver.start()
        await serve_task_api(ctx, args.listen, backend, hub)

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
