"""``vmm-task``: wiring only. As PID 1 (``/sbin/init`` of the guest image) it sets up the guest first.

Outside a VM (``--no-init``, e.g. for tests) it skips the PID 1 duties and serves on ``--listen``.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import List, Optional

from kuasar_shared.daemon.log import setup_logging
from kuasar_shared.daemon.reaper import get_reaper, set_child_subreaper
from kuasar_shared.io import StreamingHub
from kuasar_shared.task.service import TaskService
from kuasar_shared.ttrpc import Server

from kuasar_vmm_task import __version__, boot, channel
from kuasar_vmm_task.events import EventQueue
from kuasar_vmm_task.params import TaskParams, parse_cmdline
from kuasar_vmm_task.pod import PodNamespaces
from kuasar_vmm_task.sandbox import SandboxService
from kuasar_vmm_task.tasks import GuestTaskBackend

log = logging.getLogger("kuasar_vmm_task")


def _uptime() -> float:
    """Guest seconds since the kernel started (boot-time breakdowns in the console log)."""
    try:
        with open("/proc/uptime") as handle:
            return float(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0


def build_server(params: TaskParams, share: str = boot.SHARE_DIR, ns_dir: str = "/run/sandbox-ns") -> Server:
    """The one ttrpc server: Task v3+v2, Streaming and grpc.SandboxService."""
    hub = StreamingHub()
    events = EventQueue()
    pod_ns = PodNamespaces(ns_dir)
    backend = GuestTaskBackend(hub, pod_ns, events, share=share)
    sandbox = SandboxService(events, pod_ns, shell=params.debug_shell if os.path.exists(params.debug_shell)
                             else "/bin/sh")
    return Server([*TaskService(backend).services(), hub.service(), sandbox.service()])


async def _init(params: TaskParams) -> None:
    """PID 1 duties in upstream order; a missing share is logged (the host may not attach one)."""
    os.environ.update(boot.ENV)
    boot.setup_mounts()
    boot.write_sysctls(boot.SYSCTLS)
    try:
        boot.mount_share(params)
        boot.bind_resolv_conf()
    except Exception as err:  # PID 1 keeps going: the agent must still answer the host
        log.error("pod share not mounted: %s", err)
    await boot.loopback_up()


async def _serve(args: argparse.Namespace, params: TaskParams) -> None:
    get_reaper().install()
    if args.init:
        await _init(params)
    server = build_server(params)
    listeners = []
    if args.listen:
        await server.listen_unix(args.listen)
    vsock = await channel.listen_vsock(server.serve_connection)
    if vsock is not None:
        listeners.append(vsock)
        log.info("serving ttrpc on vsock port %d", channel.VSOCK_PORT)
    port = args.port or channel.find_port()
    try:
        if port:
            log.info("serving ttrpc over the mux on %s (uptime %.2f s)", port, _uptime())
            await channel.serve_port(port, server.serve_connection)
        else:
            log.warning("no virtio port named %s", channel.PORT_NAME)
            await asyncio.Event().wait()
    finally:
        for listener in listeners:
            listener.close()
        await server.shutdown()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vmm-task", description="Kuasar guest agent (PID 1 of the pod VM)")
    parser.add_argument("--version", action="version", version=f"vmm-task {__version__}")
    parser.add_argument("--no-init", dest="init", action="store_false", default=os.getpid() == 1,
                        help="skip the PID 1 set-up (default when not PID 1)")
    parser.add_argument("--listen", default="", help="also serve ttrpc on this unix socket")
    parser.add_argument("--port", default="", help="virtio port device (default: found by name)")
    parser.add_argument("--cmdline", default="/proc/cmdline", help="kernel command line to read task.* from")
    args = parser.parse_args(argv)
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
