"""What the sandboxer and the relay agree on: the control service's name, the files of a pod directory the relay
serves or dials, and the hybrid vsock agent address format. Kept apart from :mod:`.server` so that the
sandboxer, which only calls the relay, does not import the relay's task service, stdio and streaming code."""
from __future__ import annotations

from typing import Tuple

from kuasar_shared.errors import InvalidArgument

__all__ = ["CONTROL_SERVICE", "TASK_SOCKET", "AGENT_SOCKET", "HVSOCK", "parse_hvsock"]

CONTROL_SERVICE = "kuasar.vmm.relay.v1.Relay"
TASK_SOCKET = "task.sock"
AGENT_SOCKET = "agent.sock"
HVSOCK = "hvsock://"


def parse_hvsock(address: str) -> Tuple[str, int]:
    """``hvsock://<unix path>:<port>`` as (path, port). :raise InvalidArgument: anything else."""
    path, _, port = address[len(HVSOCK):].rpartition(":")
    if not address.startswith(HVSOCK) or not path.startswith("/") or not port.isdigit():
        raise InvalidArgument("agent address %r is not hvsock:///<path>:<port>" % address)
    return path, int(port)
