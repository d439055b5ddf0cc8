"""Map an OCI process + container rootfs onto what a WASI module gets: :class:`RunSpec`.

- entrypoint: ``process.args[0]`` with a leading ``/`` stripped, resolved inside the rootfs. A bare
  name (no ``/``, e.g. ``top`` from an image's ``CMD``) is looked up in the folders of the process's
  ``PATH`` first (the OCI runtimes' default path when the env has none), as runc and runwasi do;
  when no folder holds it, it is taken relative to the rootfs as before. Symlinks
  are followed relative to the rootfs; a path that leaves it (``../../etc/passwd``, or a symlink
  pointing out) is refused, never clamped. The file must be a WebAssembly binary (``\\0asm``,
  version 1) or WAT text (``.wat`` or starting with ``(module``).
- argv = ``process.args``; env = ``process.env`` (``KEY=VALUE``); cwd = ``process.cwd``. WASI
  preview 1 has no working directory, so the cwd is given the way WASI programs look for it: as
  ``PWD`` (unless the env sets one); wasi-libc programs ``chdir(getenv("PWD"))`` to honour it.
- preopens: the rootfs as ``/`` (read-only when ``root.readonly``) and every bind mount whose source
  is a directory at its destination (``ro`` honoured). File binds (``/etc/hosts``...) cannot be
  preopened in WASI and are skipped.
- memory: ``linux.resources.memory.limit`` (bytes, 0 = none).

Everything here runs in the task server before a runner is involved, so a bad request is a clear
InvalidArgument at task Create.
"""
from __future__ import annotations

import os
import stat
from typing import Any, Mapping, NamedTuple, Optional

from kuasar_shared.errors import InvalidArgument

from kuasar_wasm_sandboxer import protocol

__all__ = ["RunSpec", "Preopen", "build_run_spec", "resolve_in_root", "find_entrypoint", "module_kind",
           "MAX_ARGS_BYTES", "TRAP_EXIT", "DEFAULT_PATH"]

#: the sum of argv and env bytes a module may get (the Linux exec limit is 2 MiB per process)
MAX_ARGS_BYTES = 1 << 20
#: exit status of a module that trapped (wasmtime's own CLI uses 128 + SIGABRT on Unix too)
TRAP_EXIT = 134
_SYMLINK_LIMIT = 40
#: where a bare entrypoint name is looked up when the process env sets no PATH (runc's default)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_WASM_MAGIC = b"\0asm"


class Preopen(NamedTuple):
    """A host directory the module sees at ``guest``."""

    host: str
    guest: str
    readonly: bool = False


class RunSpec(NamedTuple):
    """What one runner process runs, saved next to the container record in the runner's field format
    (:mod:`kuasar_wasm_sandboxer.protocol`: ``arg`` and ``env`` repeat; each preopen is three fields,
    ``preopen=ro|rw``, ``host=``, ``guest=``).

    ``cache_entry`` is the verified compiled-module cache entry the task server found ("" on a miss);
    ``cache_store`` is where a runner that compiles writes the serialized code for the task server to
    make an entry of ("": the cache is off).
    """

    name: str
    module: str
    kind: str
    argv: list[str]
    env: list[tuple[str, str]]
    preopens: tuple[Preopen, ...] = ()
    memory_limit: int = 0
    cache_entry: str = ""
    cache_store: str = ""

    def save(self, path: str) -> None:
        """Write the spec for the runner (not fsynced: it is only read right away, never after a reboot)."""
        fields = [("name", self.name), ("module", self.module), ("kind", self.kind)]
        fields += [("arg", arg) for arg in self.argv]
        fields += [("env", f"{key}={value}") for key, value in self.env]
        for preopen in self.preopens:
            fields += [("preopen", "ro" if preopen.readonly else "rw"), ("host", preopen.host),
                       ("guest", preopen.guest)]
        fields += [("memory_limit", str(self.memory_limit)), ("cache_entry", self.cache_entry),
                   ("cache_store", self.cache_store)]
        with open(path, "wb") as handle:
            handle.write(protocol.encode(fields))


def resolve_in_root(root: str, path: str) -> str:
    """The host path of ``path`` inside ``root``, following symlinks as if ``root`` were ``/``.

    :raise InvalidArgument: when a ``..`` or a symlink leads out of ``root``, or symlinks loop.
    """
    pending = [p for p in path.split("/") if p not in ("", ".")]
    pending.reverse()
    done: list[str] = []
    hops = 0
    while pending:
        part = pending.pop()
        if part == "..":
            if not done:
                raise InvalidArgument(f"path {path!r} escapes the container rootfs")
            done.pop()
            continue
        host = os.path.join(root, *done, part)
        try:
            is_link = stat.S_ISLNK(os.lstat(host).st_mode)
        except FileNotFoundError:
            done.append(part)
            continue
        except OSError as err:
            raise InvalidArgument(f"cannot resolve {path!r} in the container rootfs: {err.strerror}") from err
        if not is_link:
            done.append(part)
            continue
        hops += 1
        if hops > _SYMLINK_LIMIT:
            raise InvalidArgument(f"too many symbolic links resolving {path!r} in the container rootfs")
        target = os.readlink(host)
        if target.startswith("/"):
            done = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *done)


def find_entrypoint(root: str, arg0: str, env: list[tuple[str, str]]) -> str:
    """The host path of the entrypoint ``arg0``: a bare name is searched in the env's ``PATH``.

    The first folder of ``PATH`` (absolute folders only) that holds a regular file of that name
    wins; without one the name is resolved relative to the rootfs, as a path with a ``/`` always is.

    :raise InvalidArgument: when resolving leads out of ``root`` (see :func:`resolve_in_root`).
    """
    if "/" not in arg0:
        search = next((value for key, value in env if key == "PATH"), DEFAULT_PATH)
        for folder in search.split(":"):
            if folder.startswith("/"):
                candidate = resolve_in_root(root, folder.rstrip("/") + "/" + arg0)
                if os.path.isfile(candidate):
                    return candidate
    return resolve_in_root(root, arg0)


def module_kind(host_path: str, shown: str) -> str:
    """``"wasm"`` or ``"wat"`` for the entrypoint file.

    :raise InvalidArgument: missing, not a regular file, a component, or not WebAssembly at all.
    """
    try:
        with open(host_path, "rb") as handle:
            if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
                raise InvalidArgument(f"entrypoint {shown!r} is not a regular file")
            head = handle.read(4096)
    except FileNotFoundError:
        raise InvalidArgument(f"entrypoint {shown!r} does not exist in the container rootfs") from None
    except IsADirectoryError:
        raise InvalidArgument(f"entrypoint {shown!r} is a directory, not a WebAssembly module") from None
    except OSError as err:
        raise InvalidArgument(f"cannot read entrypoint {shown!r}: {err.strerror}") from err
    if head[:4] == _WASM_MAGIC:
        if head[4:8] != b"\x01\0\0\0":
            raise InvalidArgument(f"entrypoint {shown!r} is a WebAssembly component or an unknown binary "
                                  f"version; only core modules (version 1) run here")
        return "wasm"
    text = head.lstrip()
    if host_path.endswith(".wat") or text.startswith(b"(module"):
        return "wat"
    raise InvalidArgument(f"entrypoint {shown!r} is not a WebAssembly module (.wasm binary or .wat text)")


def _env_pairs(env: list[Any]) -> list[tuple[str, str]]:
    pairs = []
    for item in env:
        key, sep, value = str(item).partition("=")
        if not key or not sep:
            raise InvalidArgument(f"env entry {item!r} is not KEY=VALUE")
        pairs.append((key, value))
    return pairs


def _is_bind(mount: Mapping[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def build_run_spec(name: str, process: Mapping[str, Any], rootfs: str, mounts: list[Any],
                   readonly_root: bool = False, memory_limit: Optional[int] = None) -> RunSpec:
    """The RunSpec for one process of a container (init or exec).

    :param name: ``<container id>`` or ``<container id>/<exec id>`` (for the runner's messages).
    :param process: the OCI Process object; ``mounts``: the spec's mounts list.
    :raise InvalidArgument: no args, an entrypoint that escapes the rootfs or is not a module, NUL
        bytes or more than :data:`MAX_ARGS_BYTES` of argv + env, a malformed env entry.
    """
    args = [str(a) for a in (process.get("args") or [])]
    if not args or not args[0]:
        raise InvalidArgument(f"{name}: process.args is empty; args[0] must name the .wasm module")
    env = _env_pairs(list(process.get("env") or []))
    size = sum(len(a.encode()) + 1 for a in args) + sum(len(k.encode()) + len(v.encode()) + 2 for k, v in env)
    if size > MAX_ARGS_BYTES:
        raise InvalidArgument(f"{name}: argv and env take {size} bytes; at most {MAX_ARGS_BYTES} are allowed")
    if any("\0" in a for a in args) or any("\0" in k or "\0" in v for k, v in env):
        raise InvalidArgument(f"{name}: argv and env must not contain NUL bytes")
    cwd = str(process.get("cwd") or "/")
    if cwd != "/" and not any(k == "PWD" for k, _ in env):
        env.append(("PWD", cwd))
    module = find_entrypoint(rootfs, args[0], env)
    kind = module_kind(module, args[0])
    preopens = [Preopen(rootfs, "/", readonly_root)]
    for mount in mounts:
        if not isinstance(mount, dict) or not _is_bind(mount):
            continue
        source, dest = str(mount.get("source") or ""), str(mount.get("destination") or "")
        if dest.startswith("/") and dest != "/" and os.path.isdir(source):
            preopens.append(Preopen(source, os.path.normpath(dest), "ro" in (mount.get("options") or [])))
    if memory_limit is not None and memory_limit < 0:
        memory_limit = 0
    return RunSpec(name=name, module=module, kind=kind, argv=args, env=env, preopens=tuple(preopens),
                   memory_limit=int(memory_limit or 0))
