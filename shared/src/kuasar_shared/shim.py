"""The ``containerd-shim-kuasar-<type>-v1`` entry point: lets containerd re-attach after a restart.

containerd 2.x resolves a binary named ``containerd-shim-<runtime_type>`` for every task it loads
at start-up, before it reads the task address our sandboxer gave it; without one it declares
every container dead (Exited 255). It also runs ``<bin> -info`` to introspect the runtime and
``<bin> ... delete`` to clean up a bundle. This binary answers exactly those two, the way
containerd's runtime v2 shim contract describes (``pkg/shim``: protobuf on stdout, exit 0), and
never serves tasks: those live in the sandboxer's task server.

- ``-info``: reads the runtime options (a serialized ``google.protobuf.Any``) from stdin and
  writes a ``containerd.types.RuntimeInfo`` (name, version, options echoed back, and the OCI
  runtime's ``features`` JSON when the sandbox type runs one). containerd's CRI reads those
  features to learn what a runtime handler supports (recursive read-only mounts: ``rro`` in
  ``mountOptions``; user namespaces), as it does from ``runc features`` through its runc shim.
- ``delete``: writes a ``containerd.task.v3.DeleteResponse`` with ``exit_status`` 137
  (128 + SIGKILL, what runc's shim reports for a task it cleans up) and ``exited_at`` now.
- ``-v`` prints the version; ``start`` and serving are refused with a clear message.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import IO, Optional, Sequence

from google.protobuf import any_pb2, timestamp_pb2

from kuasar_shared import __version__
from kuasar_shared.api.containerd.runc.options import oci_pb2
from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2

__all__ = ["runtime_name", "binary_name", "runtime_info", "runtime_features", "delete_response", "shim_main",
           "FEATURES_TYPE_URL"]

#: typeurl under which containerd registers the OCI runtime-spec ``features.Features`` (JSON-encoded)
FEATURES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/features/Features"
#: seconds ``<runtime> features`` may take
FEATURES_TIMEOUT = 10.0

#: exit status reported for a task cleaned up through ``delete``: 128 + SIGKILL
DELETE_EXIT_STATUS = 137

_BOOL_FLAGS = {"debug", "v", "version", "info"}
_VALUE_FLAGS = {"namespace", "id", "socket", "debug-socket", "bundle", "address", "publish-binary"}


def runtime_name(sandbox_type: str) -> str:
    """containerd's ``runtime_type`` for a sandbox type: ``io.containerd.kuasar-<type>.v1``."""
    return "io.containerd.kuasar-%s.v1" % sandbox_type


def binary_name(sandbox_type: str) -> str:
    """The binary containerd resolves for :func:`runtime_name`: ``containerd-shim-kuasar-<type>-v1``."""
    return "containerd-shim-kuasar-%s-v1" % sandbox_type


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _parse_any(options: bytes) -> Optional[any_pb2.Any]:
    """The options as an Any, None when empty or unparsable (dropped, not fatal)."""
    if not options:
        return None
    any_msg = any_pb2.Any()
    try:
        any_msg.ParseFromString(options)
    except Exception:  # protobuf's DecodeError
        return None
    return any_msg if any_msg.type_url else None


def runtime_info(sandbox_type: str, options: bytes = b"", version: str = __version__,
                 features: Optional[bytes] = None) -> bytes:
    """A serialized ``containerd.types.RuntimeInfo`` (api/types/introspection.proto):
    ``name = 1``, ``version = 2`` (``RuntimeVersion{version = 1, revision = 2}``),
    ``options = 3`` (Any), ``features = 4`` (Any of the OCI features JSON, :data:`FEATURES_TYPE_URL`).
    ``options`` is echoed only when it parses as an Any."""
    out = _field(1, runtime_name(sandbox_type).encode())
    out += _field(2, _field(1, version.encode()))
    any_msg = _parse_any(options)
    if any_msg is not None:
        out += _field(3, bytes(any_msg.SerializeToString()))
    if features is not None:
        out += _field(4, bytes(any_pb2.Any(type_url=FEATURES_TYPE_URL, value=features).SerializeToString()))
    return out


def _runtime_binary(default: str, options: bytes) -> str:
    """``binary_name`` of runc options (``containerd.runc.v1.Options``) when set, else ``default``."""
    any_msg = _parse_any(options)
    if any_msg is not None and any_msg.type_url.endswith("containerd.runc.v1.Options"):
        try:
            return oci_pb2.Options.FromString(any_msg.value).binary_name or default
        except Exception:  # protobuf's DecodeError: the default runtime then
            return default
    return default


def runtime_features(binary: str, timeout: float = FEATURES_TIMEOUT) -> Optional[bytes]:
    """The JSON ``<binary> features`` prints (OCI runtime-spec features.md), None when the runtime
    has no such command or answers no JSON object (containerd then assumes no optional feature)."""
    try:
        done = subprocess.run([binary, "features"], stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout, check=True)
        decoded = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout.strip() if isinstance(decoded, dict) else None


def delete_response(pid: int = 0) -> bytes:
    """A serialized ``DeleteResponse{pid, exit_status: 137, exited_at: now}``."""
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    resp = shim_pb2.DeleteResponse(pid=pid, exit_status=DELETE_EXIT_STATUS, exited_at=now)
    return bytes(resp.SerializeToString())


class _UsageError(Exception):
    pass


def _parse(argv: Sequence[str]) -> tuple[dict[str, object], list[str]]:
    """Go ``flag`` package semantics: ``-f``/``--f``, ``-f=v``/``-f v``, stop at the first non-flag."""
    flags: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name = arg.lstrip("-")
        value: Optional[str] = None
        if "=" in name:
            name, value = name.split("=", 1)
        if name in _BOOL_FLAGS:
            flags[name] = value is None or value.lower() in ("1", "t", "true")
        elif name in _VALUE_FLAGS:
            if value is None:
                if i + 1 >= len(argv):
                    raise _UsageError("flag needs an argument: -%s" % name)
                i += 1
                value = argv[i]
            flags[name] = value
        else:
            raise _UsageError("flag provided but not defined: -%s" % name)
        i += 1
    return flags, list(argv[i:])


def _read_stdin(stdin: IO[bytes]) -> bytes:
    try:
        if os.isatty(stdin.fileno()):
            return b""
    except (AttributeError, OSError, ValueError):
        pass
    return stdin.read()


def shim_main(sandbox_type: str, argv: Optional[Sequence[str]] = None, *, stdin: Optional[IO[bytes]] = None,
              stdout: Optional[IO[bytes]] = None, stderr: Optional[IO[str]] = None,
              runtime: Optional[str] = None) -> int:
    """Run the shim entry point for ``sandbox_type`` and return the exit code.

    :param argv: arguments without the program name (default ``sys.argv[1:]``).
    :param runtime: the OCI runtime binary whose ``features`` ``-info`` reports (overridden by
        ``binary_name`` in runc options); None for sandbox types that run none.
    :param stdin/stdout: binary streams (default the process's); stderr for messages.
    :return: 0 after answering ``-info``, ``-v`` or ``delete``; 2 for bad flags; 1 for anything
        this binary refuses to do (``start``, serving tasks).
    """
    argv = sys.argv[1:] if argv is None else argv
    stdin = stdin if stdin is not None else sys.stdin.buffer
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    prog = binary_name(sandbox_type)
    try:
        flags, rest = _parse(argv)
    except _UsageError as err:
        print("%s: %s" % (prog, err), file=stderr)
        return 2
    if flags.get("v") or flags.get("version"):
        stdout.write(("%s:\n  Version:  %s\n  Runtime:  %s\n\n"
                      % (prog, __version__, runtime_name(sandbox_type))).encode())
        stdout.flush()
        return 0
    if flags.get("info"):
        options = _read_stdin(stdin)
        features = runtime_features(_runtime_binary(runtime, options)) if runtime else None
        stdout.write(runtime_info(sandbox_type, options, features=features))
        stdout.flush()
        return 0
    action = rest[0] if rest else ""
    if action == "delete":
        stdout.write(delete_response())
        stdout.flush()
        return 0
    if action == "start":
        print("%s: tasks of runtime %s are served by the kuasar %s sandboxer's task server; "
              "this binary does not start shims" % (prog, runtime_name(sandbox_type), sandbox_type), file=stderr)
        return 1
    print("%s: this binary only answers -info, -v and delete for containerd; tasks are served by the "
          "kuasar %s sandboxer (got %r)" % (prog, sandbox_type, " ".join(argv)), file=stderr)
    return 1
