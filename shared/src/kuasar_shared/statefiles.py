"""Durable JSON state: atomic writes, torn-file detection, and the per-pod state directory.

A sandboxer rewrites ``<dir>/<pod id>/sandbox.json`` after every change and reads it back after a
restart. Writes go to a temporary file in the same directory, which is fsynced, renamed over the
target and followed by an fsync of the directory, so a crash leaves either the old or the new
file, never a mix. A file that still fails to parse (disk trouble, a foreign writer) raises
:class:`CorruptState`, which the caller turns into "clean up this pod" instead of a crash.

The fsyncs matter only for a machine crash. Records of what a reboot ends anyway (pods, containers,
bundle specs) skip them (``durable=False``) and stay atomic for a crashing process.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from typing import Any

from kuasar_shared.errors import Internal, NotFound
from kuasar_shared.ids import is_valid_id, validate_id
from kuasar_shared.mounts import unmount_recursive

__all__ = ["CorruptState", "write_json_atomic", "read_json", "PodStore"]

log = logging.getLogger(__name__)


class CorruptState(Internal):
    """A state file exists but cannot be decoded.

    :ivar path: the file.
    :ivar reason: what is wrong with it.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__("corrupt state file %s: %s" % (path, reason))
        self.path = path
        self.reason = reason


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: str, obj: Any, durable: bool = True) -> None:
    """Write ``obj`` as JSON to ``path`` atomically, with mode 0600.

    The data is serialized first (a :class:`TypeError` for unserializable objects leaves the old
    file untouched), written to a temporary file next to ``path``, fsynced, renamed over ``path``,
    and the directory is fsynced. The temporary file is removed on any failure.

    ``durable=False`` skips both fsyncs: the write is still atomic for a process that crashes (the
    kernel keeps what was written), only a machine crash may lose it. For a step inside a call that
    ends with a durable write of the same file: one durable write per call.

    :raise TypeError: when ``obj`` is not JSON serializable.
    :raise OSError: when the directory is missing or not writable.
    """
    data = json.dumps(obj, indent=1, sort_keys=True).encode() + b"\n"
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if durable:
        _fsync_dir(directory)


def read_json(path: str) -> Any:
    """Read a JSON file written by :func:`write_json_atomic`.

    :raise FileNotFoundError: when the file does not exist.
    :raise CorruptState: when it is empty, truncated or otherwise not valid UTF-8 JSON.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise CorruptState(path, "file is empty")
    try:
        return json.loads(data.decode())
    except UnicodeDecodeError as err:
        raise CorruptState(path, "not UTF-8 (%s)" % err) from err
    except ValueError as err:
        raise CorruptState(path, "invalid JSON (%s)" % err) from err


class PodStore:
    """The state directory of one sandboxer: ``<root>/<pod id>/<filename>``.

    Only validated ids are ever joined into paths; :meth:`ids` lists directories whose names are
    valid ids and reports (logs and returns in :attr:`rejected`) the others without following them.
    """

    def __init__(self, root: str, filename: str = "sandbox.json") -> None:
        self.root = root
        self.filename = filename
        self.rejected: list[str] = []

    def pod_dir(self, pod_id: str) -> str:
        """``<root>/<pod id>`` for a validated id.

        :raise InvalidArgument: for an unsafe id.
        """
        return os.path.join(self.root, validate_id(pod_id, "sandbox"))

    def path(self, pod_id: str) -> str:
        return os.path.join(self.pod_dir(pod_id), self.filename)

    def save(self, pod_id: str, data: Any, durable: bool = True) -> None:
        """Atomically (re)write the pod's state file, creating ``<root>/<id>`` (0700) if needed
        (``durable``: see :func:`write_json_atomic`)."""
        directory = self.pod_dir(pod_id)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        write_json_atomic(os.path.join(directory, self.filename), data, durable)

    def load(self, pod_id: str) -> Any:
        """The pod's saved state.

        :raise NotFound: when the pod has no state file.
        :raise CorruptState: when the file cannot be decoded.
        """
        path = self.path(pod_id)
        try:
            return read_json(path)
        except FileNotFoundError:
            raise NotFound("sandbox %s has no state file %s" % (pod_id, path)) from None

    def remove(self, pod_id: str) -> None:
        """Delete ``<root>/<id>`` and everything in it; mounts below it (namespace binds, rootfs)
        are unmounted first so nothing outside the directory is ever deleted. Idempotent.

        :raise MountError: when a mount below it cannot be removed (nothing is deleted then).
        """
        directory = self.pod_dir(pod_id)
        if not os.path.lexists(directory):
            return
        unmount_recursive(directory)
        shutil.rmtree(directory, ignore_errors=False)

    def ids(self) -> list[str]:
        """Sorted ids of the pod directories under the root (an absent root means none).

        Entries that are not directories or whose names are not valid ids are skipped and
        recorded in :attr:`rejected`; symlinks are never followed. Hidden entries (``.tasks``,
        ``.exits``: a sandboxer's own state next to its pods) are skipped silently.
        """
        self.rejected = []
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        found = []
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False) or entry.name.startswith("."):
                continue
            if is_valid_id(entry.name):
                found.append(entry.name)
            else:
                log.warning("ignoring %s: directory name is not a valid sandbox id", entry.path)
                self.rejected.append(entry.path)
        return sorted(found)
