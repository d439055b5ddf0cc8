"""WasmtimeEngine in-process: compile vs cache (the task server's lookup finds the entry; a hit
compiles nothing and maps the cached file), damaged cache entries, load errors (no module is run
here: running needs the runner's own stdio, see test_backend.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import wasmtime

from kuasar_wasm_sandboxer.cache import ModuleCache, content_key, engine_fingerprint
from kuasar_wasm_sandboxer.engines.wasmtime import LoadError, WasmtimeEngine
from kuasar_wasm_sandboxer.entrypoint import Preopen, RunSpec


def _spec(path: str, kind: str = "wat", cache: ModuleCache | None = None) -> RunSpec:
    """The spec as the task server hands it over: with the cache's key and entry when there is a cache."""
    key, entry = cache.find(path) if cache is not None else ("", None)
    return RunSpec(name="t", module=path, kind=kind, argv=[os.path.basename(path)], env=[],
                   preopens=(Preopen(os.path.dirname(path), "/"),), cache_key=key, cache_entry=entry or "")


def test_compile_then_cache_then_damaged_entry(tmp_path, modules) -> None:
    cache = ModuleCache(str(tmp_path / "cache"), engine_fingerprint())
    engine = WasmtimeEngine(cache)
    engine.prepare(_spec(modules["hello.wat"], cache=cache))
    assert engine.compiled
    engine.prepare(_spec(modules["hello.wat"], cache=cache))
    assert not engine.compiled
    with open(modules["hello.wat"], "rb") as handle:
        entry = cache.path(content_key(handle.read()))
    with open(entry, "r+b") as handle:
        handle.seek(100)
        handle.write(b"garbage")
    engine.prepare(_spec(modules["hello.wat"], cache=cache))
    assert engine.compiled  # recompiled, no crash
    engine.prepare(_spec(modules["prog.wasm"], "wasm", cache))
    assert engine.compiled


def test_cache_hit_compiles_nothing_and_maps_the_entry(tmp_path, modules, monkeypatch) -> None:
    cache = ModuleCache(str(tmp_path / "cache"), engine_fingerprint())
    WasmtimeEngine(cache).prepare(_spec(modules["prog.wasm"], "wasm", cache))

    def no_compiling(*args: object) -> None:
        raise AssertionError("a cache hit compiled the module")
    monkeypatch.setattr(wasmtime.Module, "__init__", no_compiling)
    engine = WasmtimeEngine(cache)
    module = engine.load(_spec(modules["prog.wasm"], "wasm", cache))
    assert not engine.compiled
    with open(modules["prog.wasm"], "rb") as handle:
        entry = cache.path(content_key(handle.read()))
    with open("/proc/self/maps") as maps:  # the machine code is the cache file's pages, shared by runners
        assert any(line.rstrip().endswith(entry) and " r-xp " in line for line in maps)
    del module


def test_load_errors(modules) -> None:
    engine = WasmtimeEngine(None)
    with pytest.raises(LoadError, match="not a valid WebAssembly module"):
        engine.prepare(_spec(modules["fake.wasm"], "wat"))
    with pytest.raises(LoadError, match="no _start"):
        engine.prepare(_spec(modules["nostart.wat"]))
    with pytest.raises(LoadError, match="cannot read"):
        engine.prepare(_spec(modules["hello.wat"] + ".missing"))


def test_warm_up_loads_code_compiled_elsewhere() -> None:
    """The fork-server's warm-up maps code a child compiled (compiled stays False) and leaves no warnings;
    in a fresh process, as in the fork-server (this one may hold compile threads: warm-up refuses then)."""
    script = ("from kuasar_wasm_sandboxer.engines.wasmtime import WasmtimeEngine\n"
              "from kuasar_wasm_sandboxer.runner_process import warm_up\n"
              "engine = WasmtimeEngine(None)\n"
              "warm_up(engine, 3)\n"
              "print(engine.compiled, engine.warnings)\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "[]"]


def test_compiling_elsewhere_is_refused_with_threads() -> None:
    engine = WasmtimeEngine(None)
    ready, release = threading.Event(), threading.Event()
    worker = threading.Thread(target=lambda: (ready.set(), release.wait()))
    worker.start()
    try:
        ready.wait()
        with pytest.raises(LoadError, match="has threads"):
            engine.compile_elsewhere("(module)")
    finally:
        release.set()
        worker.join()
