"""WasmtimeEngine: load (cache or compile), link WASI and run one module in the current process.

Imported only by the fork-server (:mod:`kuasar_wasm_sandboxer.forkserver`), which builds the
engine once; each runner it forks loads, links and runs one module (mapped from the cache entry the
task server found, or compiled). The task server never loads
wasmtime, which keeps its memory small. Code from the cache is mapped from its file, so runners
of one module share it. WASI stdio is inherited, so the module writes
straight to the runner's fds 0/1/2, which are the container's stdio. Memory: the store limit caps
linear memory at the container's limit minus what its cgroup is already charged, so a module
asking for more sees ``memory.grow`` fail (malloc returns NULL) before the cgroup would OOM-kill it.
"""
from __future__ import annotations

import os
from typing import Optional

import wasmtime

from kuasar_wasm_sandboxer.cache import ModuleCache, Warn, content_key
from kuasar_wasm_sandboxer.entrypoint import TRAP_EXIT, RunSpec

__all__ = ["WasmtimeEngine", "Program", "LoadError"]

#: bytes kept free below the container limit for the runner's own allocations
_HEADROOM = 4 << 20
_PAGE = os.sysconf("SC_PAGE_SIZE")


class LoadError(Exception):
    """The module cannot be compiled, linked or instantiated (the message is for people)."""


def _resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def _cgroup_charge() -> Optional[int]:
    """Bytes charged to this process's memory cgroup (v2 ``memory.current``, v1 ``memory.usage_in_bytes``)."""
    try:
        with open("/proc/self/cgroup") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        if controllers == "":
            usage = os.path.join("/sys/fs/cgroup", path.lstrip("/"), "memory.current")
        elif "memory" in controllers.split(","):
            usage = os.path.join("/sys/fs/cgroup/memory", path.lstrip("/"), "memory.usage_in_bytes")
        else:
            continue
        try:
            with open(usage) as handle:
                return int(handle.read())
        except (OSError, ValueError):
            continue
    return None


def _used_bytes() -> int:
    """What already counts against the container's memory limit.

    A forked runner's resident set is mostly pages it shares with the fork-server, charged to the
    fork-server's cgroup, not the container's; the container cgroup's own charge is the truth. The
    smaller of the two also covers a runner left outside any container cgroup (its cgroup is the
    task server's, whose charge is not the container's).
    """
    charged = _cgroup_charge()
    resident = _resident_bytes()
    return resident if charged is None else min(charged, resident)


class Program:
    """An instantiated module ready to run; :meth:`run` returns the exit status."""

    def __init__(self, store: wasmtime.Store, start: wasmtime.Func, name: str) -> None:
        self._store = store
        self._start = start
        self.name = name

    def run(self) -> int:
        """Call ``_start``: 0 when it returns, the ``proc_exit`` code, or :data:`TRAP_EXIT` on a trap
        (the trap message goes to the module's stderr)."""
        try:
            self._start(self._store)
        except wasmtime.ExitTrap as exit_trap:
            return int(exit_trap.code)
        except wasmtime.Trap as trap:
            _report(f"wasm trap in {self.name}: {trap.message.strip()}")
            return TRAP_EXIT
        except wasmtime.WasmtimeError as err:
            _report(f"wasm error in {self.name}: {str(err).strip()}")
            return TRAP_EXIT
        return 0


def _report(message: str) -> None:
    data = (message + "\n").encode(errors="replace")
    try:
        os.write(2, data)
    except OSError:
        pass


class WasmtimeEngine:
    """One wasmtime Engine, its WASI linker and the compiled-module cache.

    :ivar compiled: whether the last :meth:`load` compiled (False: served from the cache).
    :ivar warnings: what went wrong but did not fail the load (a damaged cache entry...), the cache's
        included: a runner hands them to the task server, whose log they belong in.
    """

    def __init__(self, cache: Optional[ModuleCache]) -> None:
        self.engine = wasmtime.Engine()
        self.cache = cache
        self.compiled = False
        self.warnings: list[str] = []
        self.warn: Warn = self.warnings.append
        if cache is not None:
            cache.warn = self.warn
        # one WASI linker for every store: built once in the fork-server, its pages shared by every runner
        self.linker = wasmtime.Linker(self.engine)
        self.linker.define_wasi()

    def load(self, spec: RunSpec) -> wasmtime.Module:
        """The compiled module of ``spec.module``: mapped from ``spec.cache_entry`` when the task server
        found one (a hit compiles nothing and does not even read the module), else compiled and stored
        under ``spec.cache_key``.

        :raise LoadError: unreadable file or invalid WebAssembly / WAT.
        """
        if spec.cache_entry:
            try:
                module = wasmtime.Module.deserialize_file(self.engine, spec.cache_entry)
                self.compiled = False
                return module
            except wasmtime.WasmtimeError as err:
                self.warn(f"{spec.name}: cached code rejected ({err}); recompiling")
        try:
            with open(spec.module, "rb") as handle:
                data = handle.read()
        except OSError as err:
            raise LoadError(f"cannot read {spec.argv[0]}: {err.strerror}") from err
        try:
            if spec.kind == "wat":
                module = wasmtime.Module(self.engine, data.decode("utf-8", errors="strict"))
            else:
                module = wasmtime.Module(self.engine, data)
        except (wasmtime.WasmtimeError, UnicodeDecodeError) as err:
            raise LoadError(f"{spec.argv[0]} is not a valid WebAssembly module: {_first_line(err)}") from err
        self.compiled = True
        if self.cache is None:
            return module
        stored = self.cache.put(spec.cache_key or content_key(data), bytes(module.serialize()))
        if stored is not None:
            # map the code just stored, so that even this first runner shares it with the next ones
            try:
                return wasmtime.Module.deserialize_file(self.engine, stored)
            except wasmtime.WasmtimeError as err:
                self.warn(f"{spec.name}: cached code rejected ({err}); running the compiled module")
        return module

    def compile_elsewhere(self, wat: str) -> bytes:
        """The serialized code of ``wat``, compiled in a child process: Cranelift's compile threads then
        never exist in this one (the fork-server must have none when it forks).

        :raise LoadError: this process has threads (a forked child would inherit a thread pool whose
            threads it does not have, and hang), or the child failed to compile it.
        """
        if len(os.listdir("/proc/self/task")) > 1:
            raise LoadError("cannot compile in a child of a process that has threads")
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.close(read)
                data = bytes(wasmtime.Module(self.engine, wat).serialize())
                while data:
                    data = data[os.write(write, data):]
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        chunks = []
        with os.fdopen(read, "rb") as pipe:
            for chunk in iter(lambda: pipe.read(1 << 16), b""):
                chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise LoadError(f"compiling a module in child {pid} failed (wait status {status})")
        return b"".join(chunks)

    def prepare(self, spec: RunSpec) -> Program:
        """Load, link WASI (argv, env, preopens, inherited stdio) and instantiate.

        :raise LoadError: the module is invalid, imports something other than WASI preview 1, has
            no ``_start``, or does not fit the memory limit.
        """
        module = self.load(spec)
        wasi = wasmtime.WasiConfig()
        wasi.argv = list(spec.argv)
        wasi.env = [list(pair) for pair in spec.env]
        wasi.inherit_stdin()
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        for preopen in spec.preopens:
            try:
                wasi.preopen_dir(preopen.host, preopen.guest, not preopen.readonly)
            except wasmtime.WasmtimeError as err:
                raise LoadError(f"cannot preopen {preopen.host} as {preopen.guest}: {_first_line(err)}") from err
        store = wasmtime.Store(self.engine)
        store.set_wasi(wasi)
        if spec.memory_limit > 0:
            store.set_limits(memory_size=max(spec.memory_limit - _used_bytes() - _HEADROOM, _PAGE))
        try:
            instance = self.linker.instantiate(store, module)
        except (wasmtime.WasmtimeError, wasmtime.Trap) as err:
            raise LoadError(f"cannot instantiate {spec.argv[0]}: {_first_line(err)}") from err
        start = instance.exports(store).get("_start")
        if not isinstance(start, wasmtime.Func):
            raise LoadError(f"{spec.argv[0]} exports no _start function (not a WASI command module)")
        return Program(store, start, spec.name)


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return " ".join(text.split("\n")[:3])

