"""``vmm-task-relay``: wiring only — parse the TaskServer command line, recover links, serve."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.daemon.log import LEVELS
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.ttrpc import Server

from kuasar_vmm_sandboxer import __version__
from kuasar_vmm_sandboxer.relay.server import Relay

NAME = "vmm-task-relay"


def parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=NAME, description="host task relay of the vmm sandbox type")
    p.add_argument("--version", action="version", version="%s %s" % (NAME, __version__))
    p.add_argument("--listen", required=True, help="control socket (what the sandboxer pings)")
    p.add_argument("--dir", required=True, help="the relay's own state directory")
    p.add_argument("--pods-dir", required=True, help="the sandboxer's --dir (pod directories)")
    p.add_argument("--log-level", default="info", choices=LEVELS)
    p.add_argument("--daemon", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse(argv)
    args.dir = os.path.abspath(args.dir)

    async def serve(ctx: DaemonContext) -> None:
        relay = Relay(os.path.abspath(args.pods_dir), args.dir)
        server = Server(relay.services())
        try:
            await relay.recover()
            await server.listen_unix(args.listen)
            ctx.ready(args.listen)
            await ctx.shutdown_event.wait()
        finally:
            await server.shutdown()
            await relay.close()

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
