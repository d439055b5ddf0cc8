"""Serving the Sandbox API: the Controller servicer on a unix socket, through :mod:`kuasar_shared.grpcserver`.

containerd dials a sandbox proxy plugin as gRPC on ``unix://<address>`` with 16 MiB message
limits; this module binds that socket the way Kuasar does (stale file removed, parent created)
and restricts it to its owner (mode 0600) because the API can start and remove pods.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any, Optional

from kuasar_shared import tracing
from kuasar_shared.errors import Unavailable
from kuasar_shared.grpcserver import MAX_MESSAGE_SIZE, GrpcServer, serve_unix
from kuasar_shared.sandbox.api import Sandboxer
from kuasar_shared.sandbox.controller import Observer, SandboxController, controller_methods
from kuasar_shared.statefiles import PodStore

if TYPE_CHECKING:
    from kuasar_shared.daemon.run import DaemonContext
    from kuasar_shared.metrics import MetricsServer, SandboxerMetrics
    from kuasar_shared.sandbox.lifecycle import PodSandboxer

__all__ = ["SandboxApiServer", "serve_sandbox_api", "serve_until_shutdown", "MAX_MESSAGE_SIZE"]

_log = logging.getLogger(__name__)

_SOCKET_MODE = 0o600


def _socket_path(listen: str) -> str:
    path = listen[len("unix://"):] if listen.startswith("unix://") else listen
    if not path:
        raise ValueError("empty listen address")
    return os.path.abspath(path)


class SandboxApiServer:
    """A running Sandbox API server. Resource handling: owns the gRPC server and the socket file,
    both released by :meth:`stop`; the sandboxer stays owned by the caller."""

    def __init__(self, server: GrpcServer, path: str, controller: SandboxController) -> None:
        self._server = server
        self._path = path
        self._controller = controller
        self._stopped = False

    @property
    def path(self) -> str:
        """Absolute path of the listening unix socket."""
        return self._path

    @property
    def address(self) -> str:
        """The gRPC target for clients: ``unix://<path>``."""
        return "unix://" + self._path

    async def stop(self, grace: Optional[float] = None) -> None:
        """Stop accepting calls, cancel pending Waits (they last as long as their pods), let other
        running calls finish for ``grace`` seconds (None = cancel them at once), remove the socket.
        Calling it again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self._server.begin_stop()  # new calls are refused from here on; then no Wait can slip in after this
        released = self._controller.release_waits()
        if released:
            _log.info("released %d pending Wait call%s", released, "" if released == 1 else "s")
        await self._server.stop(grace)
        try:
            os.unlink(self._path)
        except FileNotFoundError:
            pass
        _log.info("sandbox API on %s stopped", self._path)

    async def wait_for_termination(self) -> None:
        """Block until :meth:`stop` has completed (from another task)."""
        await self._server.wait_for_termination()

    def __repr__(self) -> str:
        return "<SandboxApiServer %s %s>" % (self._path, "stopped" if self._stopped else "serving")


async def serve_sandbox_api(listen: str, sandboxer: Sandboxer, observe: Optional[Observer] = None
                            ) -> SandboxApiServer:
    """Serve ``containerd.services.sandbox.v1.Controller`` for ``sandboxer`` on a unix socket.

    The caller recovers the sandboxer (``await sandboxer.recover()``) before calling this, so the
    engine never sees a pod missing that is still on disk.

    :param listen: socket path, or ``unix://<path>``; a stale socket file is removed and the parent
        directory created.
    :param sandboxer: the implementation every call is delegated to.
    :param observe: told the method, code and duration of every call (the metrics, when enabled).
    :raise Unavailable: when the socket cannot be bound (the message names the path).
    :return: the started server; stop it with :meth:`SandboxApiServer.stop`.
    """
    path = _socket_path(listen)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    controller = SandboxController(sandboxer, observe)
    try:
        server = await serve_unix(path, controller_methods(controller))
    except OSError as err:
        raise Unavailable("cannot listen on %s: %s" % (path, err)) from err
    os.chmod(path, _SOCKET_MODE)
    _log.info("sandbox API listening on %s", path)
    return SandboxApiServer(server, path, controller)


async def serve_until_shutdown(ctx: "DaemonContext", sandboxer: "PodSandboxer[Any]", status: str) -> None:
    """A sandboxer daemon's serving phase: recover ``sandboxer``, serve it on ``--listen`` (and its metrics
    on ``--metrics-listen`` when given), report ready (``status`` and the pods on disk in ``--dir``), and
    serve until ``ctx`` shuts down."""
    _start_tracing(ctx)
    try:
        await sandboxer.recover()
        metrics, endpoint = await _serve_metrics(ctx, sandboxer)
        server = await serve_sandbox_api(ctx.args.listen, sandboxer, metrics.observe if metrics else None)
        ctx.ready(status, recovered=len(PodStore(ctx.args.dir).ids()))
        try:
            await ctx.shutdown_event.wait()
        finally:
            await server.stop(1.0)
            if endpoint is not None:
                await endpoint.close()
    finally:
        tracing.shutdown()


def _start_tracing(ctx: "DaemonContext") -> None:
    """Export spans when ``--trace-endpoint`` asks for it; OpenTelemetry is imported only then."""
    endpoint = getattr(ctx.args, "trace_endpoint", "")
    if not endpoint:
        return
    try:
        tracing.enable(endpoint, ctx.name, ctx.version)
    except ImportError as err:
        raise Unavailable("--trace-endpoint needs opentelemetry-sdk and opentelemetry-exporter-otlp-proto-grpc "
                          "(pip install 'kuasar-shared[tracing]'): %s" % err) from err


async def _serve_metrics(ctx: "DaemonContext", sandboxer: "PodSandboxer[Any]"
                         ) -> "tuple[Optional[SandboxerMetrics], Optional[MetricsServer]]":
    """The sandboxer's metrics and their endpoint when ``--metrics-listen`` asks for them (prometheus-client is
    imported only then): the type's own series and the task server's, read from its metrics socket at each
    scrape, so that one scrape target covers the type."""
    address = getattr(ctx.args, "metrics_listen", "")
    if not address:
        return None, None
    from kuasar_shared.daemon.notls import allow
    allow()  # prometheus-client imports ssl
    try:
        from kuasar_shared.metrics import SandboxerMetrics, scrape_unix, serve_metrics
    except ImportError as err:
        raise Unavailable("--metrics-listen needs prometheus-client (pip install prometheus-client, or the "
                          "distribution's python3-prometheus-client): %s" % err) from err
    sandbox_type = ctx.name.rsplit("-sandboxer", 1)[0]
    task_server = sandboxer.task_server
    task_metrics = task_server.metrics_path if task_server is not None else ""
    metrics = SandboxerMetrics(sandbox_type, ctx.version, sandboxer.pods, lambda: sandboxer.recoveries,
                               sandboxer.type_metrics,
                               {"task-server": functools.partial(scrape_unix, task_metrics)} if task_metrics else None)
    return metrics, await serve_metrics(address, metrics.exposition)
