"""``vmm-task``: wiring only. As PID 1 (``/sbin/init`` of the guest image) it sets up the guest first.

Outside a VM (``--no-init``, e.g. for tests) it skips the PID 1 duties and serves on ``--listen``.

Boot time matters here: every import runs under emulation on hosts without KVM. The server answers
``grpc.SandboxService`` (the host's Check) as soon as the port is open; the Task and Streaming
services, whose imports are the biggest part of the agent's start-up, are imported by a background
thread after that first answer (see :class:`GuestServer`).
"""
from __future__ import annotations

import kuasar_shared.daemon.notls  # noqa: F401 (first: asyncio must not try ssl, which the image cannot load)
import asyncio
import dataclasses
import importlib
import logging
import os
import sys
import threading
from typing import Any, Callable, List, Optional

from kuasar_shared.daemon.log import setup_logging
from kuasar_shared.daemon.reaper import get_reaper, set_child_subreaper
from kuasar_shared.ttrpc import Server, Service
from kuasar_shared.ttrpc.service import Method

from kuasar_vmm_task import __version__, boot, channel, entropy, kmod
from kuasar_vmm_task.events import EventQueue
from kuasar_vmm_task.params import TaskParams, parse_cmdline
from kuasar_vmm_task.pod import PodNamespaces
from kuasar_vmm_task.sandbox import SandboxService

__all__ = ["Args", "UsageError", "parse_args", "GuestServer", "build_server", "main"]

log = logging.getLogger("kuasar_vmm_task")

#: what the Task and Streaming services need beyond the boot path, imported off the event loop; json_format
#: decodes the runc Options containerd sends with every Create (its import is ~0.1 s of a first Create under TCG)
TASK_MODULES = ("kuasar_shared.io", "kuasar_shared.task.service", "kuasar_vmm_task.tasks",
                "google.protobuf.json_format")
_USAGE = "usage: vmm-task [--version] [--no-init] [--listen PATH] [--port DEVICE] [--cmdline FILE]"
_HELP = """Kuasar guest agent (PID 1 of the pod VM)

  --version        print the version and exit
  --no-init        skip the PID 1 set-up (default when not PID 1)
  --listen PATH    also serve ttrpc on this unix socket
  --port DEVICE    virtio port device (default: found by name)
  --cmdline FILE   kernel command line to read task.* from (default /proc/cmdline)
"""


class UsageError(Exception):
    """The command line is wrong (message names the argument)."""


class Args:
    """The parsed command line. Five flags do not justify argparse's import (~0.15 s in the guest)."""

    def __init__(self) -> None:
        self.init = os.getpid() == 1
        self.listen = ""
        self.port = ""
        self.cmdline = "/proc/cmdline"
        self.version = False
        self.help = False


def parse_args(argv: List[str]) -> Args:
    """``--flag``, ``--opt VALUE`` and ``--opt=VALUE``. :raise UsageError: unknown flag, missing value."""
    args = Args()
    options = {"--listen": "listen", "--port": "port", "--cmdline": "cmdline"}
    i = 0
    while i < len(argv):
        word = argv[i]
        name, eq, value = word.partition("=")
        if word == "--version":
            args.version = True
        elif word in ("-h", "--help"):
            args.help = True
        elif word == "--no-init":
            args.init = False
        elif name in options:
            if not eq:
                i += 1
                if i == len(argv):
                    raise UsageError(f"{name} needs a value")
                value = argv[i]
            setattr(args, options[name], value)
        else:
            raise UsageError(f"unrecognized argument: {word}")
        i += 1
    return args


def _uptime() -> float:
    """Guest seconds since the kernel started (boot-time breakdowns in the console log)."""
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


class GuestServer(Server):
    """The agent's ttrpc server: grpc.SandboxService from the start, Task v3+v2 and Streaming added by
    :meth:`load_task_services`.

    Once the first call has been answered (the host's Check), :data:`TASK_MODULES` are imported by a
    background thread, and the services registered on the loop when it is done: importing them
    before, or beside the first call, delays that answer by up to 0.7 s of emulated time. A call for a
    service that is not registered yet registers them on the spot (waiting for imports the thread has
    in progress), so no call ever finds them missing.
    """

    #: after the first answer, so that the response frame leaves before the thread takes the GIL
    PRELOAD_DELAY = 0.05

    def __init__(self, sandbox: Service, task_services: Callable[[], List[Service]]) -> None:
        super().__init__([sandbox])
        self._task_services: Optional[Callable[[], List[Service]]] = task_services
        self._preload_pending = True

    @property
    def task_services_loaded(self) -> bool:
        return self._task_services is None

    def load_task_services(self) -> None:
        """Build and register the Task and Streaming services (once)."""
        if self._task_services is not None:
            build, self._task_services = self._task_services, None
            for service in build():
                self.register(service)
            log.debug("task services registered (uptime %.2f s)", _uptime())

    def lookup(self, service: str, method: str):  # type: ignore[no-untyped-def]
        found = super().lookup(service, method)
        if isinstance(found, str) and self._task_services is not None:
            self.load_task_services()
            found = super().lookup(service, method)
        if isinstance(found, Method) and self._preload_pending:
            inner = found.handler

            async def handler(*args: Any) -> Any:
                try:
                    return await inner(*args)
                finally:
                    asyncio.get_running_loop().call_later(self.PRELOAD_DELAY, self.preload)

            found = dataclasses.replace(found, handler=handler)
        return found

    def preload(self) -> None:
        """Import the task modules in a daemon thread (once); register the services on this loop afterwards."""
        if not self._preload_pending:
            return
        self._preload_pending = False
        if self._task_services is None:
            return
        loop = asyncio.get_running_loop()

        def run() -> None:
            try:
                for name in TASK_MODULES:
                    importlib.import_module(name)
            except Exception:  # the first Task call imports again on the loop and reports it
                log.exception("preloading the task services failed")
                return
            loop.call_soon_threadsafe(self.load_task_services)

        threading.Thread(target=run, name="preload-task-services", daemon=True).start()


def build_server(params: TaskParams, share: str = boot.SHARE_DIR, ns_dir: str = "/run/sandbox-ns",
                 runc_root: str = "/run/runc") -> GuestServer:
    """The one ttrpc server: grpc.SandboxService, then Task v3+v2, Streaming and, with ``task.debug``, the
    debug console."""
    events = EventQueue()
    pod_ns = PodNamespaces(ns_dir)

    async def restored() -> None:
        """A VM restored from a template: its own entropy, then its pod's share (which a template never
        mounts: QEMU cannot migrate a mounted 9p device, and the path is the pod's)."""
        log.info("restored from a template: %d bytes of host entropy, CRNG reseeded", entropy.reseed())
        boot.mount_share(params, share)
        boot.bind_resolv_conf(share)

    sandbox = SandboxService(events, pod_ns, shell=params.debug_shell if os.path.exists(params.debug_shell)
                             else "/bin/sh", before_setup=restored if params.template else None,
                             adopt_macs=params.template)

    def task_services() -> List[Service]:
        """Also imports what the preload thread would (:data:`TASK_MODULES`): a template registers its
        services on a Task call that may come before the thread is done, and must be saved holding them."""
        for name in TASK_MODULES:
            importlib.import_module(name)
        from kuasar_shared.io import StreamingHub
        from kuasar_shared.task.service import TaskService

        from kuasar_vmm_task.tasks import GuestTaskBackend

        hub = StreamingHub()
        backend = GuestTaskBackend(hub, pod_ns, events, share=share, runc_root=runc_root)
        services = [*TaskService(backend).services(), hub.service()]
        if params.debug:  # task.debug: the debug console (kuasar-ctl vm-shell)
            from kuasar_vmm_task.console import DebugConsole
            services.append(DebugConsole(sandbox.shell, boot.ENV).service())
        return services

    return GuestServer(sandbox.service(), task_services)


def _init(params: TaskParams) -> None:
    """PID 1 duties in upstream order; a missing share is logged (the host may not attach one). A
    template leaves the share to SetupSandbox (see :func:`build_server`)."""
    os.environ.update(boot.ENV)
    boot.setup_mounts()
    boot.write_sysctls(boot.SYSCTLS)
    if params.template:
        log.info("booted as a VM template: the pod share is mounted at SetupSandbox")
        boot.loopback_up()
        return
    try:
        boot.mount_share(params)
        boot.bind_resolv_conf()
    except Exception as err:  # PID 1 keeps going: the agent must still answer the host
        log.error("pod share not mounted: %s", err)
    boot.loopback_up()


async def _serve(args: Args, params: TaskParams) -> None:
    get_reaper().install()
    if args.init:
        _init(params)
    server = build_server(params)
    listeners = []
    if args.listen:
        await server.listen_unix(args.listen)
    vsock = await channel.listen_vsock(server.serve_connection)
    if vsock is not None:
        listeners.append(vsock)
        log.info("serving ttrpc on vsock port %d", channel.VSOCK_PORT)
    port = args.port or channel.find_port() or channel.find_unnamed_port()
    try:
        if port:
            log.info("serving ttrpc over the mux on %s (uptime %.2f s)", port, _uptime())
            await channel.serve_port(port, server.serve_connection)
        else:
            log.warning("no virtio port named %s, nor an unnamed port %d", channel.PORT_NAME,
                        channel.UNNAMED_AGENT_PORT)
            await asyncio.Event().wait()
    finally:
        for listener in listeners:
            listener.close()
        await server.shutdown()


def main(argv: Optional[List[str]] = None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as err:
        print(f"{_USAGE}\nvmm-task: error: {err}", file=sys.stderr)
        return 2
    if args.version:
        print(f"vmm-task {__version__}")
        return 0
    if args.help:
        print(f"{_USAGE}\n\n{_HELP}", end="")
        return 0
    try:
        with open(args.cmdline) as handle:
            cmdline = handle.read()
    except OSError:
        cmdline = ""  # /proc is not mounted yet when PID 1 starts: read again after mounting
    if args.init and not cmdline:
        boot.setup_mounts()
        with open("/proc/cmdline") as handle:
            cmdline = handle.read()
    params = parse_cmdline(cmdline)
    setup_logging("debug" if params.debug else params.log_level, stream=sys.stderr)
    set_child_subreaper(True)
    log.info("vmm-task %s starting (pid %d, share %s, uptime %.2f s)", __version__, os.getpid(),
             params.sharefs_type, _uptime())
    if args.init:
        loaded = kmod.load_modules(cmdline=cmdline)
        log.info("%d kernel modules loaded (uptime %.2f s)", len(loaded), _uptime())
    while True:
        try:
            asyncio.run(_serve(args, params))
        except KeyboardInterrupt:
            return 0
        except Exception:
            log.exception("vmm-task failed")
            if not args.init:
                return 1
        if not args.init:
            return 0
        log.error("vmm-task restarting its server (PID 1 never exits)")
