"""The compiled-module cache: serialized native code, so the second start of a module skips compiling.

Compiling a module with Cranelift takes tens of milliseconds to seconds; loading the serialized
code takes well under one. Entries are keyed by the SHA-256 of the module bytes *and* the engine
fingerprint (wasmtime version + engine settings), because serialized code only loads into the same
engine build. Each file carries its own checksum: wasmtime trusts serialized code blindly (loading a
damaged file may crash), so an entry whose checksum does not match is deleted and the module is
compiled again. The cache is bounded: after each write the least recently used entries (by mtime,
refreshed on every hit) are removed until the total fits. Writers are separate runner processes;
files are written atomically (temp + rename) and every race ends in a miss, never an error.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Optional

__all__ = ["ModuleCache", "DEFAULT_MAX_BYTES", "content_key"]

log = logging.getLogger(__name__)

#: default bound of the cache directory
DEFAULT_MAX_BYTES = 256 << 20
_MAGIC = b"KUASAR-CWASM-1\n"
_DIGEST = 32
_SUFFIX = ".cwasm"


def content_key(data: bytes) -> str:
    """The cache key part that names a module: hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


class ModuleCache:
    """A directory of ``<content sha256>-<engine fingerprint>.cwasm`` files.

    :param directory: created on first write (mode 0700).
    :param fingerprint: names the engine build and settings (a short hex string).
    :param max_bytes: the bound on the sum of entry sizes; 0 disables the cache.
    """

    def __init__(self, directory: str, fingerprint: str, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"ModuleCache({self.directory!r}, max_bytes={self.max_bytes})"

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}-{self.fingerprint}{_SUFFIX}")

    def get(self, key: str) -> Optional[bytes]:
        """The serialized code for ``key``, or None on a miss; a damaged entry is removed (miss)."""
        if self.max_bytes <= 0:
            return None
        path = self.path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError:
            return None
        header = len(_MAGIC) + _DIGEST
        payload = data[header:]
        if data[:len(_MAGIC)] != _MAGIC or hashlib.sha256(payload).digest() != data[len(_MAGIC):header]:
            log.warning("compiled-module cache entry %s is damaged; removing it and recompiling", path)
            self._unlink(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return payload

    def put(self, key: str, payload: bytes) -> None:
        """Store ``payload`` for ``key`` and trim the cache; failures are logged, never raised."""
        if self.max_bytes <= 0 or len(payload) > self.max_bytes:
            return
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
                os.rename(tmp, self.path(key))
            except BaseException:
                self._unlink(tmp)
                raise
            self.trim()
        except OSError as err:
            log.warning("cannot write compiled-module cache entry for %s: %s", key[:12], err)

    def trim(self) -> None:
        """Remove least recently used entries until the total size fits ``max_bytes``."""
        entries = []
        try:
            with os.scandir(self.directory) as it:
                for entry in it:
                    if entry.name.endswith(_SUFFIX):
                        try:
                            st = entry.stat()
                        except OSError:
                            continue
                        entries.append((st.st_mtime, st.st_size, entry.path))
        except OSError:
            return
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            self._unlink(path)
            total -= size

    def size(self) -> int:
        """Current total size of the entries in bytes."""
        try:
            with os.scandir(self.directory) as it:
                return sum(e.stat().st_size for e in it if e.name.endswith(_SUFFIX))
        except OSError:
            return 0

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
