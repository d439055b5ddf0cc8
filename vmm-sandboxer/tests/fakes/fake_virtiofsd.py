"""A stand-in for virtiofsd: Cloud Hypervisor's and QEMU's ``virtiofsd --socket-path=P --shared-dir D``
(it listens on the socket) and StratoVirt's ``vhost_user_fs -socket-path P -source D -D LOG`` (it
connects to the socket StratoVirt serves). It checks the shared directory exists, then waits to be
killed."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Dict, List

from fake_guest import fail


def options(argv: List[str]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            key, _, value = arg.partition("=")
            out[key] = value
            i += 1
        elif arg in ("--syslog",):
            out[arg] = ""
            i += 1
        elif i + 1 < len(argv):
            out[arg] = argv[i + 1]
            i += 2
        else:
            fail("virtiofsd", "%s: missing value" % arg)
    return out


async def run(argv: List[str]) -> None:
    opts = options(argv)
    if "-socket-path" in opts:  # StratoVirt's vhost_user_fs: a client of StratoVirt's socket
        if not os.path.isdir(opts.get("-source", "")):
            fail("vhost_user_fs", "-source %r is not a directory" % opts.get("-source"))
        await asyncio.open_unix_connection(opts["-socket-path"])
    else:
        if not os.path.isdir(opts.get("--shared-dir", "")):
            fail("virtiofsd", "--shared-dir %r is not a directory" % opts.get("--shared-dir"))
        await asyncio.start_unix_server(lambda r, w: None, opts["--socket-path"])
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(run(sys.argv[1:]))
