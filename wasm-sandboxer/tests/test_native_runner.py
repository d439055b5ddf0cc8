"""The native runner (native/runner.c) driven directly through a real fork-server: protocol and run-spec
faults named clearly, load errors, exit statuses and traps, the store memory limit, a rejected cache entry
recompiled, and what a runner costs in private memory."""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket

import pytest

from kuasar_shared.daemon import get_reaper
from kuasar_shared.errors import Internal, InvalidArgument
from kuasar_shared.oci import StdioFds

from kuasar_wasm_sandboxer.cache import ModuleCache, engine_fingerprint
from kuasar_wasm_sandboxer.entrypoint import TRAP_EXIT, Preopen, RunSpec
from kuasar_wasm_sandboxer.protocol import decode, encode
from kuasar_wasm_sandboxer.runner_control import ForkServer, Runner

EXIT_7_WAT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start") (call $exit (i32.const 7))))
"""
RETURN_WAT = '(module (memory (export "memory") 1) (func (export "_start")))\n'
#: grows its memory a page at a time until the store limit refuses, exits with the MiB it reached
GROW_WAT = """(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (block $full (loop $more
      (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
      (br $more)))
    (call $exit (i32.div_u (memory.size) (i32.const 16)))))
"""


@pytest.fixture
async def forkserver(tmp_path):
    server = ForkServer(ModuleCache(str(tmp_path / "cache"), engine_fingerprint(), 64 << 20))
    server.start()
    yield server
    await server.close()


def _module(tmp_path, name: str, text: str) -> str:
    path = str(tmp_path / name)
    with open(path, "w") as handle:
        handle.write(text)
    return path


def _spec(tmp_path, module: str, **fields: object) -> str:
    spec = RunSpec(name="t", module=module, kind="wat" if module.endswith(".wat") else "wasm",
                   argv=[os.path.basename(module)], env=[("A", "1")],
                   preopens=(Preopen(str(tmp_path), "/"),))._replace(**fields)
    path = str(tmp_path / f"spec-{os.urandom(4).hex()}.run")
    spec.save(path)
    return path


def _write_spec(tmp_path, fields: list[tuple[str, str]]) -> str:
    path = str(tmp_path / f"raw-{os.urandom(4).hex()}.run")
    with open(path, "wb") as handle:
        handle.write(encode(fields))
    return path


async def _run(runner: Runner, stdio: StdioFds) -> int:
    """Start ``runner`` and return its exit status (it re-parents to this process, a subreaper)."""
    exited = get_reaper().subscribe(runner.pid)
    runner.start(stdio)
    return (await asyncio.wait_for(exited, 30)).status


async def _run_capturing(runner: Runner) -> tuple[int, bytes]:
    """Start ``runner`` with a pipe as its stderr; returns (exit status, stderr)."""
    read, write = os.pipe()
    try:
        status = await _run(runner, StdioFds(stderr=write))
    finally:
        os.close(write)
    with os.fdopen(read, "rb") as pipe:
        return status, pipe.read()


async def test_exit_statuses_and_trap_message(forkserver, tmp_path) -> None:
    cases = ((EXIT_7_WAT, 7, b""), (RETURN_WAT, 0, b""),
             ('(module (func (export "_start") unreachable))', TRAP_EXIT, b"wasm trap in t: "))
    for text, expected, message in cases:
        runner = await forkserver.take()
        await runner.configure("t", _spec(tmp_path, _module(tmp_path, "m.wat", text)))
        status, err = await _run_capturing(runner)
        assert status == expected and err.startswith(message), err
    assert b"unreachable" in err  # the trap's own words follow


async def test_memory_limit_caps_linear_memory(forkserver, tmp_path) -> None:
    runner = await forkserver.take()
    await runner.configure("t", _spec(tmp_path, _module(tmp_path, "grow.wat", GROW_WAT), memory_limit=32 << 20))
    status, _ = await _run_capturing(runner)
    # the limit less what the runner already uses (outside a container cgroup: its resident set, which
    # counts the pages it shares with the fork-server) and 4 MiB of headroom
    assert 0 < status < 28, status


async def test_spec_message_and_file_faults_are_named(forkserver, tmp_path) -> None:
    runner = await forkserver.take()
    runner.control.send(b"garbage")
    reply = dict(decode(await asyncio.wait_for(asyncio.get_running_loop().sock_recv(runner.control, 65536), 30)))
    assert reply == {"error": "malformed control message: its last field is not ended by a NUL byte"}
    await runner.abandon()
    module = _module(tmp_path, "m.wat", RETURN_WAT)
    good = [("name", "t"), ("module", module), ("kind", "wat"), ("arg", "m.wat")]
    faults = (
        (good + [("colour", "red")], "unknown field colour"),
        (good[1:], "no name field"),
        (good + [("memory_limit", "lots")], "memory_limit lots is not a byte count"),
        (good + [("host", "/")], "field host does not follow a preopen field"),
        (good + [("preopen", "rw"), ("host", "/")], "no host or guest of a preopen field"),
        (good + [("preopen", "maybe")], "preopen is maybe, not ro or rw"),
        (good + [("env", "NOVALUE")], "env field NOVALUE is not KEY=VALUE"),
        ([("name", "t"), ("module", module), ("kind", "elf"), ("arg", "x")], "kind is elf, not wasm or wat"),
    )
    for fields, message in faults:
        runner = await forkserver.take()
        path = _write_spec(tmp_path, fields)
        with pytest.raises(InvalidArgument, match=f"t: {path} holds no run spec: {message}"):
            await runner.configure("t", path)
        await runner.abandon()
    runner = await forkserver.take()
    with pytest.raises(InvalidArgument, match="cannot read run spec /nonexistent: No such file"):
        await runner.configure("t", "/nonexistent")
    await runner.abandon()


async def test_load_errors_are_named(forkserver, tmp_path) -> None:
    cases = ((_module(tmp_path, "fake.wat", "not wasm"), "fake.wat is not a valid WebAssembly module: "),
             (_module(tmp_path, "nostart.wat", '(module (func (export "main")))'),
              "nostart.wat exports no _start function"),
             (str(tmp_path / "gone.wasm"), "cannot read gone.wasm: No such file"),
             (_module(tmp_path, "imports.wat", '(module (import "env" "f" (func)) (func (export "_start")))'),
              "cannot instantiate imports.wat: "))
    for module, message in cases:
        runner = await forkserver.take()
        with pytest.raises(InvalidArgument, match=f"^t: {message}"):
            await runner.configure("t", _spec(tmp_path, module))
        await runner.abandon()
    runner = await forkserver.take()
    with pytest.raises(InvalidArgument, match="cannot preopen /nonexistent as /data"):
        await runner.configure("t", _spec(tmp_path, _module(tmp_path, "m.wat", RETURN_WAT),
                                          preopens=(Preopen("/nonexistent", "/data"),)))
    await runner.abandon()


async def test_a_rejected_cache_entry_is_recompiled_with_a_warning(forkserver, tmp_path, caplog) -> None:
    cache = forkserver.cache
    assert cache is not None
    module = _module(tmp_path, "m.wat", RETURN_WAT)
    key, _ = cache.find(module)
    entry = cache.path(key)
    os.makedirs(cache.directory, exist_ok=True)
    with open(entry, "wb") as handle:  # intact checksum, but not code wasmtime accepts
        handle.write(b"not serialized code")
    with open(entry + ".sum", "w") as handle:
        handle.write(hashlib.sha256(b"not serialized code").hexdigest())
    assert cache.lookup(key) == entry
    staged = cache.staging("t")
    runner = await forkserver.take()
    with caplog.at_level(logging.WARNING):
        reply = await runner.configure("t", _spec(tmp_path, module, cache_entry=entry, cache_store=staged))
    assert reply.compiled and reply.stored and reply.load_ms > 0
    assert any("cached code rejected" in r.getMessage() and "recompiling" in r.getMessage() for r in caplog.records)
    assert cache.adopt(key, staged) == entry and cache.lookup(key) == entry  # the good code replaces it
    assert await _run(runner, StdioFds()) == 0
    runner = await forkserver.take()
    reply = await runner.configure("t", _spec(tmp_path, module, cache_entry=entry))
    assert not reply.compiled and not reply.stored
    await runner.abandon()


async def test_malformed_start_is_named_and_runs_nothing(tmp_path) -> None:
    log_path = str(tmp_path / "forkserver.log")
    saved = os.dup(2)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.dup2(log, 2)  # the fork-server's stderr, which runners write to before start: the task server's log
    try:
        server = ForkServer(None)
        server.start()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(log)
    try:
        runner = await server.take()
        await runner.configure("t", _spec(tmp_path, _module(tmp_path, "m.wat", EXIT_7_WAT)))
        exited = get_reaper().subscribe(runner.pid)
        socket.send_fds(runner.control, [encode([("start", "stdout,stdout")])], [])
        runner.control.close()
        assert (await asyncio.wait_for(exited, 30)).status == 1
    finally:
        await server.close()
    with open(log_path) as handle:
        assert f"wasm runner {runner.pid} (t): malformed start message: start names stdout,stdout for 0 fds" \
            in handle.read()


async def test_closed_before_start_ends_quietly_and_a_start_removes_the_spec(forkserver, tmp_path) -> None:
    """The run spec is the trace a restarted task server reads to know whether its last start arrived."""
    module = _module(tmp_path, "m.wat", EXIT_7_WAT)
    runner = await forkserver.take()
    kept = _spec(tmp_path, module)
    await runner.configure("t", kept)
    exited = get_reaper().subscribe(runner.pid)
    runner.control.close()
    assert (await asyncio.wait_for(exited, 30)).status == 0
    assert os.path.exists(kept)
    runner = await forkserver.take()
    removed = _spec(tmp_path, module)
    await runner.configure("t", removed)
    assert await _run(runner, StdioFds()) == 7 and not os.path.exists(removed)


async def test_a_malformed_hello_is_refused(forkserver) -> None:
    from kuasar_wasm_sandboxer.runner_control import _hello_pid

    assert _hello_pid(b"pid=42\0") == 42
    for hello in (b"pid=x\0", b"ready=1\0", b"pid=1"):
        with pytest.raises(Internal, match="hello is malformed"):
            _hello_pid(hello)


def _private_dirty_kb(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        return sum(int(line.split()[1]) for line in handle if line.startswith("Private_Dirty:"))


async def test_a_runner_of_a_cached_module_writes_little_of_its_own(forkserver, tmp_path) -> None:
    """The fork-server is a C program: a runner copies its own stack, heap and the module's memory, not an
    interpreter's pages (a Python runner wrote ~2.2 MB of them, a C runner forked from Python ~0.34 MB).
    Asserted at issue 17's 1 MB per container, well above the ~0.2 MB it measures, so that a runner that
    runs in or forks from an interpreter again, or copies per-runner state it should share, fails."""
    cache = forkserver.cache
    assert cache is not None
    module = _module(tmp_path, "loop.wat", '(module (memory (export "memory") 1) (func (export "_start") '
                                           '(loop $l (br $l))))')
    key, _ = cache.find(module)
    staged = cache.staging("first")
    first = await forkserver.take()
    assert (await first.configure("t", _spec(tmp_path, module, cache_store=staged))).stored
    cache.adopt(key, staged)
    await first.abandon()
    runner = await forkserver.take()
    assert not (await runner.configure("t", _spec(tmp_path, module, cache_entry=cache.path(key)))).compiled
    exited = get_reaper().subscribe(runner.pid)
    runner.start(StdioFds())
    await asyncio.sleep(0.3)  # running _start
    try:
        assert _private_dirty_kb(runner.pid) < 1024
        with open(f"/proc/{runner.pid}/maps") as maps:  # its code is the cache file's pages
            assert any(line.rstrip().endswith(cache.path(key)) and " r-xp " in line for line in maps)
    finally:
        os.kill(runner.pid, 9)
        assert (await asyncio.wait_for(exited, 10)).status == 137
