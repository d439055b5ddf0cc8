"""The serving part of every task server's ``main``: Task API (v3 + v2) and Streaming on a unix socket.

The runc, quark and wasm task servers differ in their backend only; each recovers its backend and
hands it here, which serves until the daemon is told to stop and then releases the backend (its
containers keep running: a restarted task server re-adopts them).
"""
from __future__ import annotations

import os

from kuasar_shared.daemon.run import DaemonContext
from kuasar_shared.io import StreamingHub
from kuasar_shared.oci.recorded import RecordedTaskBackend
from kuasar_shared.task.service import TaskService
from kuasar_shared.ttrpc import Server

__all__ = ["serve_task_api"]


async def serve_task_api(ctx: DaemonContext, listen: str, backend: RecordedTaskBackend, hub: StreamingHub) -> None:
    """Serve ``backend`` (and ``hub``'s Streaming service) on ``listen`` until ``ctx`` shuts down."""
    server = Server([*TaskService(backend).services(), hub.service()])
    try:
        await server.listen_unix(os.path.abspath(listen))
        ctx.ready(listen)
        await ctx.shutdown_event.wait()
    finally:
        await server.shutdown()
        await backend.close()
