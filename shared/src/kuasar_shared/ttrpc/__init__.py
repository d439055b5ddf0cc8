"""asyncio ttrpc (containerd/ttrpc wire protocol): transports -> framing -> client/server -> services.

Public surface: :class:`Server`, :class:`Service`, :class:`CallContext`, :class:`Connection`,
:class:`ServerStream`, :class:`Client`, :class:`ClientStream`, :data:`MAX_MESSAGE`.
"""
from kuasar_shared.ttrpc.client import Client, ClientStream
from kuasar_shared.ttrpc.framing import MAX_MESSAGE
from kuasar_shared.ttrpc.server import Server
from kuasar_shared.ttrpc.service import CallContext, Connection, Service, ServerStream

__all__ = ["Client", "ClientStream", "Server", "Service", "CallContext", "Connection", "ServerStream",
           "MAX_MESSAGE"]
