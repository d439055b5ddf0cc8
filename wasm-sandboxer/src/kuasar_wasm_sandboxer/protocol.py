"""The wire format between the task server and the native runners (native/runner.c): control messages
on each runner's SOCK_SEQPACKET socket and the run-spec file both are a sequence of ``name=value``
fields, each ended by a NUL byte (:mod:`kuasar_shared.native`). Names repeat where a list is meant
(``arg``, ``env``, ``warning``).

The conversation, one message per step::

    runner -> server   pid=<pid>               (at once: the server moves it into the container's cgroup)
    server -> runner   spec=<run spec path>
    runner -> server   ready=1 compiled=0|1 stored=0|1 load_ms=<ms> [warning=...]...
                       or error=<message> [warning=...]...
    server -> runner   start=<stdio names, comma-separated> + those fds (SCM_RIGHTS; both then close the socket)

The stdio comes only with ``start`` (WASI's inherited stdio writes to fds 0/1/2 as they are when the
module runs): a runner that is never started never held the engine's FIFOs. Before ``start`` the runner
exits quietly (status 0) when the socket closes. On ``start`` it removes its run spec before the module
runs: a task server killed around the moment it sent ``start`` cannot know whether the message left,
and its successor reads the answer from that file (see
:meth:`~kuasar_wasm_sandboxer.backend.WasmTaskBackend.recover`); a runner that cannot remove it does not
run (status 1, a line in the task server's log, as for a malformed ``start``).
"""
from __future__ import annotations

from kuasar_shared.native import decode, encode

__all__ = ["encode", "decode", "FORK", "STDIO_NAMES", "MAX_MESSAGE"]

#: the task server's request to the fork-server (with the runner's control socket attached)
FORK = b"fork"
STDIO_NAMES = ("stdin", "stdout", "stderr")
#: the largest control message either side sends or reads
MAX_MESSAGE = 65536
