"""An asyncio driver for OCI runtime command lines (runc, youki, runsc, quark).

Every sandbox type that runs containers through an OCI runtime binary uses this one driver, so the
command lines, the log handling and the error translation live in one place. Each call runs the
binary through :mod:`kuasar_shared.process` (never ``asyncio.create_subprocess_exec``: the daemon
reaper owns every child). Failures raise :mod:`kuasar_shared.errors` types carrying the runtime's own
message, read from its JSON log: ``--log <file> --log-format json`` for calls whose stdio belongs to
the container (create, exec), stderr otherwise.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import IO, Any, Optional, Sequence

from kuasar_shared import process
from kuasar_shared.errors import (AlreadyExists, FailedPrecondition, Internal, InvalidArgument,
                                  KuasarError, NotFound)

__all__ = ["OciRuntime", "StdioFds", "error_from_output", "read_pid_file"]

log = logging.getLogger(__name__)

#: substrings of runtime messages -> the typed error they mean (first match wins)
_MESSAGE_ERRORS: tuple[tuple[str, type[KuasarError]], ...] = (
    ("does not exist", NotFound),
    ("already exists", AlreadyExists),
    ("exists", AlreadyExists),
    ("invalid container id", InvalidArgument),
    ("not running", FailedPrecondition),
    ("not paused", FailedPrecondition),
    ("is paused", FailedPrecondition),
    ("is stopped", FailedPrecondition),
    ("not stopped", FailedPrecondition),
    ("stopped container", FailedPrecondition),
    # runsc, for a container whose process has already gone / was never started
    ("no such process", NotFound),
    # runc, for a kill that races the exit of the container's init ("unable to signal init: os: process
    # already finished"); containerd's shim (checkKillError) calls it NotFound too
    ("process already finished", NotFound),
    ("in state created", FailedPrecondition),
)


@dataclass(frozen=True)
class StdioFds:
    """File descriptors the runtime (and thus the container process) gets as stdin/stdout/stderr.

    ``None`` means /dev/null. The caller owns the descriptors and closes them after the call.
    """

    stdin: Optional[int] = None
    stdout: Optional[int] = None
    stderr: Optional[int] = None


def _last_error(text: str) -> str:
    """The message of the last error line of a runtime log (JSON lines, or plain text)."""
    message = ""
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            message = line
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal", "panic"):
            message = str(entry.get("msg", line))
    return message


def error_from_output(action: str, container_id: str, output: str, returncode: int) -> KuasarError:
    """Build the typed error for a failed runtime call from its log or stderr text."""
    message = _last_error(output) or f"exit status {returncode}"
    lowered = message.lower()
    cls: type[KuasarError] = Internal
    for needle, candidate in _MESSAGE_ERRORS:
        if needle in lowered:
            cls = candidate
            break
    return cls(f"{action} {container_id}: {message}")


class OciRuntime:
    """One OCI runtime binary with its state root.

    Args:
        binary: name on PATH or absolute path of the runtime (``runc``).
        root: the runtime's ``--root`` state directory (created on first use by the runtime).
        extra_global_args: more global options placed before the sub-command (``--systemd-cgroup``,
            ``--platform=ptrace``...).
        prefix: a wrapper command the binary is run under (``unshare --mount ...``), if any.
    """

    def __init__(self, binary: str = "runc", root: str = "/run/kuasar/runc",
                 extra_global_args: Sequence[str] = (), prefix: Sequence[str] = ()) -> None:
        self.binary = binary
        self.root = root
        self.extra_global_args = tuple(extra_global_args)
        self.prefix = tuple(prefix)

    def __repr__(self) -> str:
        return f"OciRuntime(binary={self.binary!r}, root={self.root!r})"

    def _argv(self, *args: str, log_file: Optional[str] = None) -> list[str]:
        argv = [*self.prefix, self.binary, "--root", self.root]
        if log_file is not None:
            argv += ["--log", log_file]
        argv += ["--log-format", "json", *self.extra_global_args, *args]
        return argv

    async def _call(self, action: str, container_id: str, *args: str) -> bytes:
        """Run a sub-command whose output is ours; return its stdout.

        Output goes to anonymous files, not pipes: a sub-command may leave helpers running that
        inherit its stdio (``runsc start`` starts the container's gofer), and a pipe would then
        never reach EOF.
        """
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            done = await process.run(self._argv(*args), stdout=out.fileno(), stderr=err.fileno(), check=False)
            stdout, stderr = _rewind(out), _rewind(err)
        if done.returncode != 0:
            raise error_from_output(action, container_id, _text(stderr) or _text(stdout), done.returncode)
        return stdout

    async def _call_with_stdio(self, action: str, container_id: str, log_file: str, stdio: StdioFds,
                               *args: str) -> None:
        """Run a sub-command whose stdio goes to the container; errors come from ``log_file``."""
        offset = _size(log_file)
        done = await process.run(self._argv(*args, log_file=log_file), stdin=_fd(stdio.stdin),
                                 stdout=_fd(stdio.stdout), stderr=_fd(stdio.stderr), check=False)
        if done.returncode != 0:
            raise error_from_output(action, container_id, _read_from(log_file, offset),
                                    done.returncode)

    async def create(self, container_id: str, bundle: str, pid_file: str, stdio: StdioFds = StdioFds(),
                     console_socket: Optional[str] = None, no_pivot: bool = False) -> int:
        """``create``: set up the container with its init process waiting for :meth:`start`.

        The runtime's log goes to ``<bundle>/log.json``. Returns the init pid read from ``pid_file``.
        Raises AlreadyExists when the id is taken, Internal (with the runtime's message) otherwise.
        """
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if no_pivot:
            args.append("--no-pivot")
        await self._call_with_stdio("create", container_id, os.path.join(bundle, "log.json"), stdio,
                                    *args, container_id)
        return read_pid_file(pid_file)

    async def start(self, container_id: str, stdio: Optional[StdioFds] = None,
                    log_file: Optional[str] = None) -> None:
        """``start``: run the user process of a created container.

        ``stdio`` (with ``log_file`` for the runtime's errors): the process's stdio, for runtimes
        that take it from ``start`` rather than ``create`` (runsc sub-containers).
        """
        if stdio is None or log_file is None:
            await self._call("start", container_id, "start", container_id)
        else:
            await self._call_with_stdio("start", container_id, log_file, stdio, "start", container_id)

    async def exec(self, container_id: str, process_json: str, pid_file: str, log_file: str,
                   stdio: StdioFds = StdioFds(), detach: bool = True,
                   console_socket: Optional[str] = None, internal_pid_file: Optional[str] = None) -> int:
        """``exec --process``: start one more process in a running container; return its pid.

        ``internal_pid_file`` (runsc): where the runtime writes the process's pid inside the
        sandbox; the returned host pid is then a waiter that exits with the process's status.
        """
        args = ["exec", "--process", process_json, "--pid-file", pid_file]
        if internal_pid_file:
            args += ["--internal-pid-file", internal_pid_file]
        if detach:
            args.append("--detach")
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._call_with_stdio("exec", container_id, log_file, stdio, *args, container_id)
        return read_pid_file(pid_file)

    async def kill(self, container_id: str, signal: int, all: bool = False, pid: int = 0) -> None:
        """``kill``: signal the init process (``all``: every process of the container; ``pid``: the
        process with that runtime-internal pid, runsc's ``--pid``)."""
        args = ["kill"]
        if all:
            args.append("--all")
        if pid:
            args += ["--pid", str(pid)]
        await self._call("kill", container_id, *args, container_id, str(signal))

    async def wait(self, container_id: str) -> int:
        """``wait`` (runsc): block until the container's init exits; return its exit status
        (128 + signal when killed).

        :raise Internal: when the runtime cannot tell (e.g. the sandbox process died).
        """
        result = _json(await self._call("wait", container_id, "wait", container_id), container_id)
        try:
            return int(result["exitStatus"])
        except (KeyError, TypeError, ValueError) as err:
            raise Internal(f"runtime answered no exit status for {container_id}: {result!r}") from err

    async def delete(self, container_id: str, force: bool = False) -> None:
        """``delete``: remove the runtime's state and the container's cgroup."""
        args = ["delete"]
        if force:
            args.append("--force")
        await self._call("delete", container_id, *args, container_id)

    async def state(self, container_id: str) -> dict[str, Any]:
        """``state``: the runtime's JSON view (``status``, ``pid``, ``bundle``...)."""
        state = _json(await self._call("state", container_id, "state", container_id), container_id)
        if not isinstance(state, dict):
            raise Internal(f"runtime answered a non-object state for {container_id}")
        return state

    async def ps(self, container_id: str) -> list[int]:
        """``ps --format json``: pids of every process in the container."""
        pids = _json(await self._call("ps", container_id, "ps", "--format", "json", container_id),
                     container_id)
        return [int(pid) for pid in pids or []]

    async def pause(self, container_id: str) -> None:
        await self._call("pause", container_id, "pause", container_id)

    async def resume(self, container_id: str) -> None:
        await self._call("resume", container_id, "resume", container_id)

    async def update(self, container_id: str, resources: dict[str, Any]) -> None:
        """``update --resources``: apply OCI ``linux.resources`` to a live container."""
        with tempfile.NamedTemporaryFile("w", prefix="resources-", suffix=".json") as handle:
            json.dump(resources, handle)
            handle.flush()
            await self._call("update", container_id, "update", "--resources", handle.name,
                             container_id)

    async def stats(self, container_id: str) -> dict[str, Any]:
        """``events --stats``: one stats sample; returns its ``data`` object (cpu, memory, pids...)."""
        event = _json(await self._call("stats", container_id, "events", "--stats", container_id),
                      container_id)
        data = event.get("data") if isinstance(event, dict) else None
        return data if isinstance(data, dict) else {}


def read_pid_file(path: str) -> int:
    """The pid a runtime wrote to ``--pid-file``."""
    try:
        with open(path) as handle:
            return int(handle.read().strip())
    except (OSError, ValueError) as err:
        raise Internal(f"runtime left no readable pid file {path}: {err}") from err


def _rewind(handle: IO[bytes]) -> bytes:
    handle.seek(0)
    return handle.read()


def _fd(fd: Optional[int]) -> int:
    return process.DEVNULL if fd is None else fd


def _json(raw: bytes, container_id: str) -> Any:
    try:
        return json.loads(raw or b"null")
    except ValueError as err:
        raise Internal(f"runtime answered unreadable JSON for {container_id}: {raw[:200]!r}") from err


def _text(data: Optional[bytes]) -> str:
    return (data or b"").decode("utf-8", "replace")


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _read_from(path: str, offset: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            return _text(handle.read())
    except OSError:
        return ""
