"""ModuleCache: hits, damaged entries removed, the size bound, disabled cache."""
from __future__ import annotations

import os
import time

from kuasar_wasm_sandboxer.cache import ModuleCache, content_key


def test_put_get_and_damaged_entry(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "c"), "f1")
    key = content_key(b"module bytes")
    assert cache.get(key) is None
    cache.put(key, b"native code")
    assert cache.get(key) == b"native code"
    assert ModuleCache(str(tmp_path / "c"), "f2").get(key) is None  # another engine build
    with open(cache.path(key), "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        handle.write(b"X")
    assert cache.get(key) is None and not os.path.exists(cache.path(key))
    with open(cache.path(key), "wb") as handle:
        handle.write(b"short")
    assert cache.get(key) is None


def test_bound_evicts_least_recently_used(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path), "f", max_bytes=3000)
    keys = [content_key(bytes([i])) for i in range(3)]
    for i, key in enumerate(keys[:2]):
        cache.put(key, b"x" * 1000)
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.get(keys[0]) is not None  # a hit refreshes the entry
    cache.put(keys[2], b"y" * 1000)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) and cache.get(keys[2])
    assert cache.size() <= 3000
    cache.put(content_key(b"big"), b"z" * 5000)  # larger than the bound: not stored
    assert cache.get(content_key(b"big")) is None


def test_disabled_cache(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "off"), "f", max_bytes=0)
    cache.put("k", b"data")
    assert cache.get("k") is None and not os.path.exists(tmp_path / "off")
