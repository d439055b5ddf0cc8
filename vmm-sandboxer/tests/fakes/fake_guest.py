"""The guest side of a fake VM: vmm-task's own SandboxService on the agent channel, in this process.

A fake hypervisor (``fake_qemu.py``, ``fake_stratovirt.py``, ``fake_cloud_hypervisor.py``) calls
:func:`serve_serial_port` for a virtio-serial chardev (it listens, the relay connects and speaks the
mux, as with the guest's ``kuasar.agent`` port) or :func:`serve_hybrid_vsock` for a Cloud Hypervisor
style vsock socket (``CONNECT <port>\\n`` / ``OK <n>\\n``, then plain ttrpc). What the agent would do to
the guest kernel (sysctls, pod namespaces, links, routes, the clock) is replaced by recorders that log
to stderr: the service code, the protocol and the messages are the real ones. A kernel command line
with ``fake.silent_agent`` (:data:`SILENT`) makes a guest that never gets to its agent: the channel
accepts the host and stays mute, as a stalled boot does.
"""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Mapping, Optional

from kuasar_shared.ttrpc import Server
from kuasar_shared.ttrpc.mux import MuxConnection
from kuasar_vmm_task import network, pod, sandbox
from kuasar_vmm_task.events import EventQueue

__all__ = ["build_server", "serve_serial_port", "serve_hybrid_vsock", "fail", "SILENT"]

log = logging.getLogger("fake-guest")
VSOCK_AGENT_PORT = 1024
SILENT = "fake.silent_agent"


def fail(program: str, message: str) -> None:
    """Exit like a hypervisor refusing its command line (status 1, message on stderr)."""
    print("%s: %s" % (program, message), file=sys.stderr, flush=True)
    sys.exit(1)


class _RecordedNamespaces:
    """Stands in for the guest's pod namespaces."""

    async def create(self, hostname: str, share_pid: bool, sysctls: Optional[Mapping[str, str]] = None) -> None:
        log.info("pod namespaces: hostname %s, shared pid %s, sysctls %s", hostname, share_pid, dict(sysctls or {}))


async def _recorded(what: str, items: Any) -> None:
    log.info("%s: %s", what, list(items))


def build_server() -> Server:
    """A ttrpc server with vmm-task's grpc.SandboxService."""
    network.apply_interfaces = lambda items: _recorded("interfaces", items)  # type: ignore[assignment]
    network.apply_routes = lambda items: _recorded("routes", items)  # type: ignore[assignment]
    pod.apply_sysctls = lambda sysctls, proc_sys="": log.info("sysctls: %s", dict(sysctls))  # type: ignore
    service = sandbox.SandboxService(EventQueue(), _RecordedNamespaces(),  # type: ignore[arg-type]
                                     set_clock=lambda ns: log.info("clock set to %d", ns))
    server = Server()
    server.register(service.service())
    return server


async def serve_serial_port(path: str, server: Server, silent: bool = False) -> asyncio.AbstractServer:
    """Listen on ``path`` like a ``server=on`` chardev; each host connection is one mux session
    (``silent``: read and ignored)."""
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if silent:
            while await reader.read(4096):
                pass
            return
        mux = MuxConnection(reader, writer, is_host=False)
        try:
            await mux.serve(server.serve_connection)
        finally:
            await mux.close()
    return await asyncio.start_unix_server(session, path)


async def serve_hybrid_vsock(path: str, server: Server) -> asyncio.AbstractServer:
    """Listen on ``path`` like Cloud Hypervisor's ``--vsock socket=``: each connection names a guest port."""
    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = (await reader.readline()).decode(errors="replace").split()
        if len(line) != 2 or line[0] != "CONNECT" or line[1] != str(VSOCK_AGENT_PORT):
            writer.close()  # nothing listens on that guest port: the real VMM closes the connection too
            return
        writer.write(b"OK %d\n" % (1 << 30 | os.getpid() & 0xFFFF))
        await writer.drain()
        await server.serve_connection(reader, writer)
    return await asyncio.start_unix_server(connection, path)
