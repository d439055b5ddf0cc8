"""The serving part of every task server's ``main``: Task API (v3 + v2) and Streaming on a unix socket.

The runc, quark and wasm task servers differ in their backend only; each recovers its backend and
hands it here, which serves until the daemon is told to stop and then releases the backend (its
containers keep running: a restarted task server re-adopts them).

Behind a task front (``kuasar_shared.taskfront``) a stop is a live upgrade: the server stops
accepting, lets calls with effects finish (Wait calls are not waited for: the front sends them again
to the successor), and journals every tagged call so the front's replays run at most once.
"""
from __future__ import annotations

import logging
import os

from kuasar_shared.daemon.run import DaemonContext
from kuasar_shared.io import StreamingHub
from kuasar_shared.oci.recorded import RecordedTaskBackend
from kuasar_shared.task.journal import RequestJournal
from kuasar_shared.task.service import TaskService
from kuasar_shared.ttrpc import Server

__all__ = ["serve_task_api", "JOURNAL_DIR", "MAX_CONNECTIONS", "DRAIN_TIMEOUT"]

log = logging.getLogger(__name__)

#: the request journal, inside the task server's --dir
JOURNAL_DIR = ".requests"
#: connections served at once (the front opens one per engine connection, and bounds those)
MAX_CONNECTIONS = 80
#: seconds a stopping server waits for calls with effects in flight
DRAIN_TIMEOUT = 30.0
#: long-held calls a stopping server does not wait for
_LONG_HELD = ("Wait", "Stream")


async def serve_task_api(ctx: DaemonContext, listen: str, backend: RecordedTaskBackend, hub: StreamingHub) -> None:
    """Serve ``backend`` (and ``hub``'s Streaming service) on ``listen`` until ``ctx`` shuts down."""
    journal = RequestJournal(os.path.join(backend.store.directory, JOURNAL_DIR))
    server = Server([*TaskService(backend, journal).services(), hub.service()], max_connections=MAX_CONNECTIONS)
    try:
        await server.listen_unix(os.path.abspath(listen))
        ctx.ready(listen)
        await ctx.shutdown_event.wait()
        server.stop_listening()
        if not await server.drain(DRAIN_TIMEOUT, keep=_LONG_HELD):
            log.warning("calls still running after %s s are cancelled; a restarted server settles them",
                        DRAIN_TIMEOUT)
    finally:
        await server.shutdown()
        await backend.close()
