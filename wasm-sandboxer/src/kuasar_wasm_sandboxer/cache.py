"""The compiled-module cache: serialized native code that runners map straight from its file.

Compiling a module with Cranelift takes tens of milliseconds to seconds; mapping the serialized
code (wasmtime's ``wasmtime_module_deserialize_file``) takes well under one, and every runner of the same
module maps the same file, so N containers of one image share one copy of the machine code in the
page cache instead of each holding its own. Entries are keyed by the SHA-256 of the module bytes
*and* the engine fingerprint (wasmtime version + engine settings), because serialized code only
loads into the same engine build. Each ``.cwasm`` file is exactly what wasmtime serialized (it is
mapped as is) and its checksum sits beside it in a ``.sum`` file: wasmtime trusts serialized code
blindly (loading a damaged file may crash), so an entry whose checksum does not match is deleted
and the module is compiled again. The cache is bounded: after each write the least recently used
entries (by mtime, refreshed on every hit) are removed until the total fits.

The task server looks entries up (:meth:`ModuleCache.find`: hashing the module and checking the entry's
sum is its work, not a runner's) and hands the runner the verified path. On a miss the runner compiles,
writes the serialized code whole to a staging file the task server named (:meth:`ModuleCache.staging`)
and maps it; the task server then checksums it and renames it into place (:meth:`ModuleCache.adopt`):
a mapped file is never changed in place, and every race ends in a miss, never an error. Nothing here
imports wasmtime: the engine fingerprint names the native library's file.
"""
from __future__ import annotations

import os
import sys
from importlib.util import find_spec
from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import hashlib

__all__ = ["ModuleCache", "CacheCounters", "Warn", "DEFAULT_MAX_BYTES", "content_key", "engine_fingerprint",
           "ENGINE_SETTINGS"]

#: where the cache's warnings go (the task server's log)
Warn = Callable[[str], None]

#: default bound of the cache directory
DEFAULT_MAX_BYTES = 256 << 20
_SUFFIX = ".cwasm"
_SUM_SUFFIX = ".sum"
_CHUNK = 64 << 10
#: names the wasmtime Engine settings runners compile with (native/runner.c: wasm_engine_new, the defaults)
ENGINE_SETTINGS = "default-config"


def _sha256(data: bytes) -> "hashlib._Hash":
    """hashlib imported on first use: a task server with the cache off never needs it (~0.6 MB with OpenSSL)."""
    import hashlib

    return hashlib.sha256(data)


def _to_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


def content_key(data: bytes) -> str:
    """The cache key part that names a module: hex SHA-256 of its bytes."""
    return _sha256(data).hexdigest()


def engine_fingerprint() -> str:
    """Short hex naming the wasmtime build and settings: serialized code only loads into the same one.

    The build is named by its native library's path, size and mtime, found without importing wasmtime
    (the task server never loads it): another wasmtime version or a reinstall gives another fingerprint,
    so old entries are misses, never loaded (wasmtime would refuse them anyway; they age out by LRU).

    :raise FileNotFoundError: wasmtime is not installed.
    """
    spec = find_spec("wasmtime")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the wasmtime package is not installed")
    package = list(spec.submodule_search_locations)[0]
    libraries = []
    for folder, _dirs, files in os.walk(package):
        for name in files:
            if name.endswith((".so", ".dylib", ".dll")):
                st = os.stat(os.path.join(folder, name))
                libraries.append(f"{os.path.join(folder, name)}:{st.st_size}:{st.st_mtime_ns}")
    identity = " ".join(sorted(libraries)) + " " + ENGINE_SETTINGS
    return _sha256(identity.encode()).hexdigest()[:16]


def _file_digest(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks (no copy of a large entry in this process's heap)."""
    digest = _sha256(b"")
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CacheCounters:
    """Module loads by outcome, counted by the task server from each runner's reply (for the metrics).

    :ivar hits: loads mapped from the cache; ``misses``: loads that compiled (cache off, no entry, or an
        entry wasmtime refused); ``compile_seconds``: the time those compiling loads took, in total.
    """

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.compile_seconds = 0.0

    def count(self, compiled: bool, seconds: float) -> None:
        if compiled:
            self.misses += 1
            self.compile_seconds += seconds
        else:
            self.hits += 1


class ModuleCache:
    """A directory of ``<content sha256>-<engine fingerprint>.cwasm`` files (plus ``.sum`` files).

    :param directory: created on first write (mode 0700).
    :param fingerprint: names the engine build and settings (a short hex string).
    :param max_bytes: the bound on the sum of entry sizes; 0 disables the cache.
    :param warn: told about damaged or unwritable entries (default: stderr).
    """

    def __init__(self, directory: str, fingerprint: str, max_bytes: int = DEFAULT_MAX_BYTES,
                 warn: Optional[Warn] = None) -> None:
        self.directory = directory
        self.fingerprint = fingerprint
        self.max_bytes = max_bytes
        self.warn: Warn = warn or _to_stderr

    def __repr__(self) -> str:
        return f"ModuleCache({self.directory!r}, max_bytes={self.max_bytes})"

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}-{self.fingerprint}{_SUFFIX}")

    def find(self, module: str) -> tuple[str, Optional[str]]:
        """The key of the module file ``module`` and its verified entry (None on a miss).

        :raise OSError: the module cannot be read.
        """
        key = _file_digest(module)
        return key, self.lookup(key)

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
            self.warn(f"cannot read compiled-module cache entry {path}: {err}")
            return None
        if actual != expected:
            self.warn(f"compiled-module cache entry {path} is damaged; removing it and recompiling")
            self._remove(path)
            return None
        try:
            os.utime(path)
        except OSError:
            pass
        return path

    def staging(self, token: str) -> str:
        """A path in the cache directory (created) where a runner may write the compiled code of a miss.

        :raise OSError: the directory cannot be created.
        """
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        return os.path.join(self.directory, f".tmp-{token}.staged")

    def adopt(self, key: str, staged: str) -> Optional[str]:
        """Make the file ``staged`` (whole serialized code a runner wrote) the entry for ``key`` and trim
        the cache; returns the entry's path, or None when it was not kept (failures are logged, never
        raised; the file is removed then). A runner that mapped it keeps its mapping across the rename."""
        path = self.path(key)
        try:
            size = os.stat(staged).st_size
            if self.max_bytes <= 0 or size > self.max_bytes:
                self._unlink(staged)
                return None
            self._write(path + _SUM_SUFFIX, _file_digest(staged).encode())
            os.rename(staged, path)
            self.trim()
        except OSError as err:
            self.warn(f"cannot write compiled-module cache entry for {key[:12]}: {err}")
            self._unlink(staged)
            return None
        return path if os.path.exists(path) else None

    def discard(self, staged: str) -> None:
        """Remove a staging file that did not become an entry (if the runner wrote one)."""
        self._unlink(staged)

    def _write(self, path: str, data: bytes) -> None:
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{os.path.basename(path)}")
        try:
            with open(tmp, "xb") as handle:
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
