"""ModuleCache: entries adopted from a runner's staging file, hits, damaged entries removed, the size bound,
disabled cache."""
from __future__ import annotations

import os
import time
from typing import Optional

from kuasar_wasm_sandboxer.cache import ModuleCache, content_key


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def _put(cache: ModuleCache, key: str, payload: bytes) -> Optional[str]:
    """What a runner and the task server do after a miss: write a staging file, adopt it."""
    os.makedirs(cache.directory, exist_ok=True)
    staged = os.path.join(cache.directory, ".tmp-test.staged")
    with open(staged, "wb") as handle:
        handle.write(payload)
    entry = cache.adopt(key, staged)
    assert not os.path.exists(staged)  # renamed into place or removed
    return entry


def test_put_lookup_and_damaged_entry(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "c"), "f1")
    key = content_key(b"module bytes")
    assert cache.lookup(key) is None
    assert _put(cache, key, b"native code") == cache.path(key)
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
        _put(cache, key, b"x" * 1000)
        os.utime(cache.path(key), (time.time() - 100 + i, time.time() - 100 + i))
    assert cache.lookup(keys[0]) is not None  # a hit refreshes the entry
    _put(cache, keys[2], b"y" * 1000)
    assert cache.lookup(keys[1]) is None and cache.lookup(keys[0]) and cache.lookup(keys[2])
    assert cache.size() <= 2500
    assert _put(cache, content_key(b"big"), b"z" * 5000) is None  # larger than the bound: not stored
    assert cache.lookup(content_key(b"big")) is None


def test_disabled_cache(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "off"), "f", max_bytes=0)
    assert _put(cache, "k", b"data") is None
    assert cache.lookup("k") is None and os.listdir(tmp_path / "off") == []


def test_staging_files_are_not_entries(tmp_path) -> None:
    cache = ModuleCache(str(tmp_path / "c"), "f", max_bytes=2500)
    staged = cache.staging("abc")
    assert os.path.dirname(staged) == cache.directory and os.path.isdir(cache.directory)
    with open(staged, "wb") as handle:
        handle.write(b"x" * 5000)
    assert cache.size() == 0  # a runner's half-written file never counts nor is trimmed
    cache.discard(staged)
    cache.discard(staged)  # gone already: no error
    assert os.listdir(cache.directory) == []
    assert cache.adopt("k", staged) is None  # nothing staged: a warning, no entry
