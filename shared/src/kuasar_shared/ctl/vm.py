"""``kuasar-ctl vm-exec``: run a debug command inside a vmm pod's guest, outside every container.

The call is the guest agent's ``grpc.SandboxService/ExecVMProcess`` on the pod's task address (the
host relay carries it to the guest like any task call). That RPC answers the command's output only
(upstream's proto has no exit code), so the command runs in a subshell followed by a marker line
carrying ``$?``, which is parsed back off the end. Its stderr is merged into stdout because the guest
answers the two streams concatenated, which would push the marker away from the end. A ttrpc deadline
makes the guest kill the command; it then exits 124 like ``timeout(1)`` and ``kuasar-ctl exec``.
"""
from __future__ import annotations

import shlex
from typing import Optional, Sequence

from kuasar_shared.api.kuasar import sandbox_pb2
from kuasar_shared.ctl.engine import Engine
from kuasar_shared.errors import DeadlineExceeded, FailedPrecondition, Internal, InvalidArgument
from kuasar_shared.ttrpc import Client

__all__ = ["RC_MARKER", "TIMEOUT_EXIT_CODE", "wrap_command", "split_output", "vm_exec"]

RC_MARKER = "__KUASAR_RC="
TIMEOUT_EXIT_CODE = 124
_SERVICE = "grpc.SandboxService"
_UNIX = "ttrpc+unix://"


def wrap_command(argv: Sequence[str]) -> str:
    """The ``sh -c`` text run in the guest: ``argv`` (stderr merged) then the exit-code marker."""
    if not argv:
        raise InvalidArgument("vm-exec: no command given")
    return "( %s ) 2>&1; printf '\\n%s%%s\\n' \"$?\"" % (shlex.join(argv), RC_MARKER)


def split_output(out: str) -> tuple[str, int]:
    """(the command's own output, its exit code) from the answer to :func:`wrap_command`.

    :raise Internal: the marker is missing (the guest shell did not finish the wrapper).
    """
    body, sep, tail = out.rpartition("\n" + RC_MARKER)
    code = tail.strip()
    if not sep or not code.isdigit():
        raise Internal("vm-exec: the guest's answer has no exit code marker: %r" % out[-200:])
    return body, int(code)


async def vm_exec(engine: Engine, pod_id: str, argv: Sequence[str], timeout: Optional[float] = None,
                  stdin: bytes = b"") -> tuple[str, int]:
    """Run ``argv`` in the guest of the ready vmm pod ``pod_id``; returns (output, exit code).

    :raise InvalidArgument: the pod is not a vmm pod. :raise FailedPrecondition: it is not ready.
    """
    pod, status = await engine.pod_status(pod_id)
    if pod.sandboxer != "vmm":
        raise InvalidArgument("vm-exec: pod %s is a %s pod, not a vmm (VM) pod" % (pod_id[:13], pod.sandboxer))
    if status is None or pod.state != "SANDBOX_READY" or not status.address.startswith(_UNIX):
        raise FailedPrecondition("vm-exec: pod %s is not ready" % pod_id[:13])
    command = wrap_command(argv)
    client = await Client.connect_unix(status.address[len(_UNIX):])
    try:
        answer = await client.call(_SERVICE, "ExecVMProcess",
                                   sandbox_pb2.ExecVMProcessRequest(command=command, stdin=stdin),
                                   sandbox_pb2.ExecVMProcessResponse, timeout=timeout)
    except DeadlineExceeded:
        return "", TIMEOUT_EXIT_CODE
    finally:
        await client.close()
    return split_output(answer.out)
