"""Every task server's ``main``: Task API (v3 + v2) and Streaming on a unix socket, over one backend.

The runc, quark and wasm task servers differ in their backend only: each entry point calls
:func:`run_task_server` with its defaults, its extra arguments and a function that opens its backend
(recovered). This serves until the daemon is told to stop and then releases the backend (its
containers keep running: a restarted task server re-adopts them).

Behind a task front (``kuasar-taskfront``, shared/native/taskfront.c) a stop is a live upgrade: the server
stops accepting, lets calls with effects finish (Wait calls are not waited for: the front sends them again
to the successor), and journals every tagged call so the front's replays run at most once.

``--metrics-listen`` (the sandboxer passes a private unix socket, which its own endpoint reads at each
scrape) and ``--trace-endpoint`` (the sandboxer's) are off by default; prometheus-client and OpenTelemetry
are imported only when they are given.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NoReturn, Optional, Sequence

from kuasar_shared import tracing

from kuasar_shared.daemon.args import build_parser
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.errors import Unavailable
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.exits import EXITS_DIR, ExitRecorder
from kuasar_shared.task.journal import RequestJournal
from kuasar_shared.task.recorded import RecordedTaskBackend
from kuasar_shared.task.service import TaskService
from kuasar_shared.ttrpc import Server

if TYPE_CHECKING:
    from kuasar_shared.metrics import MetricsServer

__all__ = ["run_task_server", "serve_task_api", "BackendOpener", "JOURNAL_DIR", "MAX_CONNECTIONS", "DRAIN_TIMEOUT"]

log = logging.getLogger(__name__)

#: the request journal, inside the task server's --dir
JOURNAL_DIR = ".requests"
#: connections served at once: the front opens one per engine connection and bounds those at
#: 1024 (containerd 2.x holds one per pod); the rest are for kuasar-ctl and direct clients
MAX_CONNECTIONS = 1024 + 16
#: seconds a stopping server waits for calls with effects in flight
DRAIN_TIMEOUT = 30.0
#: long-held calls a stopping server does not wait for
_LONG_HELD = ("Wait", "Stream")
#: seconds between sweeps of exit records no process of ours will claim, and their minimum age
#: (well above RecordedTaskBackend.claim_timeout)
EXIT_SWEEP_INTERVAL = 5.0
EXIT_RECORD_GRACE = 30.0


async def _sweep_exits(backend: RecordedTaskBackend[Any]) -> None:
    """Keep the sandboxer's exit records to those of our processes (see ExitRecorder.sweep)."""
    if backend.exits is None:
        return
    while True:
        await asyncio.sleep(EXIT_SWEEP_INTERVAL)
        removed = backend.exits.sweep(backend.tracked_pids(), EXIT_RECORD_GRACE)
        if removed:
            log.debug("removed %d exit records no container of ours will claim", removed)


async def serve_task_api(ctx: DaemonContext, listen: str, backend: RecordedTaskBackend[Any], hub: StreamingHub,
                         metrics_listen: str = "") -> None:
    """Serve ``backend`` (and ``hub``'s Streaming service) on ``listen`` until ``ctx`` shuts down, and its
    metrics on ``metrics_listen`` when given."""
    journal = RequestJournal(os.path.join(backend.store.directory, JOURNAL_DIR))
    endpoint: Optional[MetricsServer] = None
    observe = None
    if metrics_listen:
        from kuasar_shared.daemon.notls import allow
        allow()  # prometheus-client imports ssl
        try:
            from kuasar_shared.metrics import serve_metrics
            from kuasar_shared.task.metrics import TaskServerMetrics
        except ImportError as err:
            raise Unavailable("--metrics-listen needs prometheus-client: %s" % err) from err
        metrics = TaskServerMetrics(backend)
        endpoint = await serve_metrics(metrics_listen, metrics.exposition)
        observe = metrics.observe
    server = Server([*TaskService(backend, journal, observe).services(), hub.service()],
                    max_connections=MAX_CONNECTIONS)
    sweeper = asyncio.ensure_future(_sweep_exits(backend))
    try:
        await server.listen_unix(os.path.abspath(listen))
        ctx.ready(listen)
        await ctx.shutdown_event.wait()
        server.stop_listening()
        if not await server.drain(DRAIN_TIMEOUT, keep=_LONG_HELD):
            log.warning("calls still running after %s s are cancelled; a restarted server settles them",
                        DRAIN_TIMEOUT)
    finally:
        sweeper.cancel()
        await asyncio.gather(sweeper, return_exceptions=True)
        await server.shutdown()
        if endpoint is not None:
            await endpoint.close()
        await backend.close()


#: makes a sandbox type's backend from the parsed arguments, the Streaming hub and the sandboxer's exit
#: records (None without ``--pods-dir``), and recovers it (with whatever must follow recovery)
BackendOpener = Callable[[argparse.Namespace, StreamingHub, Optional[ExitRecorder]],
                         Awaitable[RecordedTaskBackend[Any]]]


def run_task_server(name: str, version: str, argv: Optional[Sequence[str]], *, description: str, listen: str,
                    directory: str, pods_dir: str, pods_dir_help: str, open_backend: BackendOpener,
                    add_arguments: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> NoReturn:
    """Parse the task server's command line, then serve the backend ``open_backend`` gives until stopped.

    The common arguments are the daemon's (``--listen``, ``--dir``, ``--log-level``...) plus
    ``--pods-dir``, the sandboxer's ``--dir`` (its pod records and exit records), ``--metrics-listen`` and
    ``--trace-endpoint``; ``add_arguments`` adds
    a type's own. ``--dir`` and ``--pods-dir`` are made absolute. Exits the process (0 clean, 1 when
    serving failed), as :func:`~kuasar_shared.daemon.run.run_daemon` does.
    """
    parser = build_parser(name, version, listen=listen, dir=directory, description=description)
    parser.add_argument("--pods-dir", default=pods_dir, metavar="DIR", help=pods_dir_help)
    parser.add_argument("--metrics-listen", default="", metavar="ADDR",
                        help="serve Prometheus metrics at http://ADDR/metrics: unix:/path or HOST:PORT (default: "
                             "off; the sandboxer passes its private socket when its own metrics are on)")
    parser.add_argument("--trace-endpoint", default="", metavar="URL",
                        help="export OpenTelemetry spans to this OTLP/gRPC collector (default: off)")
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    args.dir = os.path.abspath(args.dir)
    args.pods_dir = os.path.abspath(args.pods_dir) if args.pods_dir else ""

    async def serve(ctx: DaemonContext) -> None:
        if args.trace_endpoint:
            try:
                tracing.enable(args.trace_endpoint, name, version)
            except ImportError as err:
                raise Unavailable("--trace-endpoint needs opentelemetry-sdk and "
                                  "opentelemetry-exporter-otlp-proto-grpc: %s" % err) from err
        try:
            hub = StreamingHub()
            exits = ExitRecorder(os.path.join(args.pods_dir, EXITS_DIR)) if args.pods_dir else None
            backend = await open_backend(args, hub, exits)
            await serve_task_api(ctx, args.listen, backend, hub, args.metrics_listen)
        finally:
            tracing.shutdown()

    run_daemon(name, version, args, serve)
