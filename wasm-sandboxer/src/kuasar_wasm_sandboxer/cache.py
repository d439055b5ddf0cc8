"""The compiled-module cache: serialized native code that runners map straight from its file.

Compiling a module with Cranelift takes tens of milliseconds to seconds; mapping the serialized
code (wasmtime's ``Module.deserialize_file``) takes well under one, and every runner of the same
module maps the same file, so N containers of one image share one copy of the machine code in the
page cache instead of each holding its own. Entries are keyed by the SHA-256 of the module bytes
*and* the engine fingerprint (wasmtime version + engine settings), because serialized code only
loads into the same engine build. Each ``.cwasm`` file is exactly what wasmtime serialized (it is
mapped as is) and its checksum sits beside it in a ``.sum`` file: wasmtime trusts serialized code
blindly (loading a damaged file may crash), so an entry whose checksum does not match is deleted
and the module is compiled again. The cache is bounded: after each write the least recently used
entries (by mtime, refreshed on every hit) are removed until the total fits. Writers are separate
runner processes; files are written whole and renamed into place (a mapped file is never changed
in place), and every race ends in a miss, never an error.
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
_SUFFIX = ".cwasm"
_SUM_SUFFIX = ".sum"
_CHUNK = 64 << 10


def content_key(data: bytes) -> str:
    """The cache key part that names a module: hex SHA-256 of its bytes."""
    return hashlib.sha256(data).hexdigest()


def _file_digest(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks (no copy of a large entry in this process's heap)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ModuleCache:
    """A directory of ``<content sha256>-<engine fingerprint>.cwasm`` files (plus ``.sum`` files).

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

    def lookup(self, key: str) -> Optional[str]:
        """The path of the verified serialized code for ``key``, or None on a miss.

        A damaged entry (checksum mismatch, missing checksum) is removed: a miss.
        """
        if self.max_bytes <= 0:
            return None
        path = self.path(key)
        try:
            with open(path + _SUM_SUFFIX) as handle:
                expected = handle.read().strip()
            actual = _file_digest(path)
        except FileNotFoundError:
            return None
        except OSError as err:
            log.warning("cannot read compiled-module cache entry %s: %s", path, err)
            return None
        if actual != expected:
            log.warning("compiled-module cache entry %s is damaged; removing it and recompiling", path)
            self._remove(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return path

    def put(self, key: str, payload: bytes) -> Optional[str]:
        """Store ``payload`` for ``key`` and trim the cache; returns the entry's path, or None when
        it was not stored (failures are logged, never raised)."""
        if self.max_bytes <= 0 or len(payload) > self.max_bytes:
            return None
        path = self.path(key)
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            self._write(path + _SUM_SUFFIX, hashlib.sha256(payload).hexdigest().encode())
            self._write(path, payload)
            self.trim()
        except OSError as err:
            log.warning("cannot write compiled-module cache entry for %s: %s", key[:12], err)
            return None
        return path if os.path.exists(path) else None

    def _write(self, path: str, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.rename(tmp, path)
        except BaseException:
            self._unlink(tmp)
            raise

    def _entries(self) -> list[tuple[float, int, str]]:
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
            pass
        return entries

    def trim(self) -> None:
        """Remove least recently used entries until the total size fits ``max_bytes``."""
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= self.max_bytes:
                break
            self._remove(path)
            total -= size

    def size(self) -> int:
        """Current total size of the entries in bytes."""
        return sum(size for _, size, _ in self._entries())

    def _remove(self, path: str) -> None:
        """Unlink an entry (runners that mapped it keep their mapping) and its checksum."""
        self._unlink(path)
        self._unlink(path + _SUM_SUFFIX)

    @staticmethod
    def _unlink(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass
