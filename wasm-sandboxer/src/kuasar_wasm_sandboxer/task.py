"""``wasm-task``: wiring only — the shared task server (kuasar_shared.task.main) with a fork-server of
wasm runners."""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not load ssl)
import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import ExitRecorder
from kuasar_shared.task.main import run_task_server

from kuasar_wasm_sandboxer import __version__
from kuasar_wasm_sandboxer.backend import WasmTaskBackend
from kuasar_wasm_sandboxer.cache import DEFAULT_MAX_BYTES, ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.runner_control import ForkServer

NAME = "wasm-task"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", default="", metavar="DIR",
                        help="compiled-module cache (default: <dir>/cache; 'off' disables it)")
    parser.add_argument("--cache-size", type=int, default=DEFAULT_MAX_BYTES, metavar="BYTES",
                        help="bound of the compiled-module cache (default: %(default)s)")


async def _open_backend(args: argparse.Namespace, hub: StreamingHub,
                        exits: Optional[ExitRecorder]) -> WasmTaskBackend:
    """The backend, recovered, with its fork-server started after recovery."""
    cache_dir = "" if args.cache_dir == "off" else os.path.abspath(args.cache_dir or os.path.join(args.dir, "cache"))
    cache = ModuleCache(cache_dir, engine_fingerprint(), args.cache_size,
                        warn=logging.getLogger("kuasar_wasm_sandboxer.cache").warning) if cache_dir else None
    forkserver = ForkServer(cache)
    backend = WasmTaskBackend(args.dir, forkserver, pods_dir=args.pods_dir, hub=hub, exits=exits)
    await backend.recover()
    forkserver.start()
    return backend


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_task_server(NAME, __version__, argv, listen="/run/kuasar-wasm/task.sock",
                           directory="/run/kuasar-wasm/.tasks", pods_dir="",
                           pods_dir_help="wasm-sandboxer's --dir (pod records)",
                           description="Task API server for every wasm pod (started by wasm-sandboxer)",
                           open_backend=_open_backend, add_arguments=_add_arguments)


if __name__ == "__main__":
    sys.exit(main())
