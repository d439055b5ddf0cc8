"""ModuleCache: hits, damaged entries removed, the size bound, disabled cache."""
from __future__ import annotations

import os
import time

from kuasar_wasm_sandboxer.cache import ModuleCache, content_key


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_put_lookup_and_damaged_entry(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "c"), "f1")
    key = content_key(b"module bytes")
    assert cache.lookup(key) is None
    assert cache.put(key, b"native code") == cache.path(key)
    assert cache.lookup(key) == cache.path(key)
    assert _read(cache.path(key)) == b"native code"  # exactly what wasmtime maps, no header
    assert ModuleCache(str(tmp_path / "c"), "f2").lookup(key) is None  # another engine build
    with open(cache.path(key), "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"X")
    assert cache.lookup(key) is None and not os.path.exists(cache.path(key))
    assert os.listdir(tmp_path / "c") == []  # the checksum went with it
    with open(cache.path(key), "wb") as handle:  # an entry without its checksum is a miss
        handle.write(b"native code")
    assert cache.lookup(key) is None


def test_bound_evicts_least_recently_used(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path), "f", max_bytes=2500)
    keys = [content_key(bytes([i])) for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, b"x" * 1000)
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.lookup(keys[0]) is not None  # a hit refreshes the entry
    cache.put(keys[2], b"y" * 1000)
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[0]) and cache.lookup(keys[2])
    assert cache.size() <= 2500
    assert cache.put(content_key(b"big"), b"z" * 5000) is None  # larger than the bound: not stored
    assert cache.lookup(content_key(b"big")) is None


def test_disabled_cache(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "off"), "f", max_bytes=0)
    assert cache.put("k", b"data") is None
    assert cache.lookup("k") is None and not os.path.exists(tmp_path / "off")
