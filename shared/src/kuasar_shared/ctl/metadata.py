"""kuasar-ctl's client-side metadata, the way containerd keeps its own CRI store.

The Sandbox API has no List, and the Task API knows nothing about names, images or log paths, so
the engine remembers pods and containers itself:

    <root>/<type>/pods/<pod id>/pod.json             PodRecord (+ hostname, hosts, resolv.conf)
    <root>/<type>/containers/<id>/container.json     ContainerRecord
    <root>/<type>/containers/<id>/bundle/config.json the OCI spec handed to task Create
    <root>/<type>/containers/<id>/{fs,work}          overlay upperdir/workdir (snapshotter stand-in)
    <root>/<type>/containers/<id>/io/                stdio FIFOs

Files are written atomically (:func:`kuasar_shared.statefiles.write_json_atomic`). Ids are accepted by
unique prefix, like crictl.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any, Optional, Type, TypeVar

from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.ids import validate_id
from kuasar_shared.statefiles import CorruptState, read_json, write_json_atomic

__all__ = ["PodRecord", "ContainerRecord", "CtlStore", "resolve_prefix"]

log = logging.getLogger(__name__)
R = TypeVar("R", "PodRecord", "ContainerRecord")


@dataclass
class PodRecord:
    id: str
    name: str
    namespace: str
    uid: str
    attempt: int
    created_at: int
    #: PodSandboxConfig as proto-JSON (field names preserved)
    config: dict[str, Any]
    sandboxer: str
    runtime_handler: str
    netns_path: str = ""
    #: False when the caller passed ``--netns`` (a CNI-style namespace it made and removes itself)
    netns_owned: bool = True
    address: str = ""
    version: int = 0
    pid: int = 0
    state: str = "SANDBOX_NOTREADY"
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)


@dataclass
class ContainerRecord:
    id: str
    pod_id: str
    name: str
    attempt: int
    image: str
    image_path: str
    created_at: int
    io_type: str
    log_path: str = ""
    state: str = "CONTAINER_CREATED"
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    pid: int = 0
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    logger_pid: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    #: announced to the sandboxer through ``extensions.tasks`` before its task Create, as iSulad does
    announced: bool = False


def resolve_prefix(prefix: str, ids: list[str], kind: str) -> str:
    """The one id in ``ids`` that equals or starts with ``prefix``.

    :raise NotFound: no id matches. :raise InvalidArgument: more than one matches, or empty prefix.
    """
    if not prefix:
        raise InvalidArgument(f"{kind} id must not be empty")
    if prefix in ids:
        return prefix
    matches = [i for i in ids if i.startswith(prefix)]
    if not matches:
        raise NotFound(f"{kind} {prefix!r} not found")
    if len(matches) > 1:
        shown = ", ".join(m[:13] for m in sorted(matches)[:5])
        raise InvalidArgument(f"{kind} id prefix {prefix!r} is ambiguous: matches {shown}")
    return matches[0]


class CtlStore:
    """Metadata of one sandbox type under ``<root>/<type>``."""

    def __init__(self, root: str, sandboxer: str) -> None:
        self.base = os.path.join(root, validate_id(sandboxer, "sandboxer"))
        self.pods_dir = os.path.join(self.base, "pods")
        self.containers_dir = os.path.join(self.base, "containers")

    def pod_dir(self, pod_id: str) -> str:
        return os.path.join(self.pods_dir, validate_id(pod_id, "sandbox"))

    def container_dir(self, ctr_id: str) -> str:
        return os.path.join(self.containers_dir, validate_id(ctr_id, "container"))

    def bundle_dir(self, ctr_id: str) -> str:
        return os.path.join(self.container_dir(ctr_id), "bundle")

    # -- records --------------------------------------------------------------------------------
    def save_pod(self, pod: PodRecord) -> None:
        os.makedirs(self.pod_dir(pod.id), mode=0o700, exist_ok=True)
        write_json_atomic(os.path.join(self.pod_dir(pod.id), "pod.json"), dataclasses.asdict(pod))

    def save_container(self, ctr: ContainerRecord) -> None:
        os.makedirs(self.container_dir(ctr.id), mode=0o700, exist_ok=True)
        write_json_atomic(os.path.join(self.container_dir(ctr.id), "container.json"), dataclasses.asdict(ctr))

    def _load(self, path: str, cls: Type[R], what: str) -> R:
        try:
            data = read_json(path)
        except FileNotFoundError:
            raise NotFound(f"{what} not found") from None
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise CorruptState(path, str(err)) from err

    def load_pod(self, pod_id: str) -> PodRecord:
        """:raise NotFound: unknown pod. :raise CorruptState: unreadable record."""
        return self._load(os.path.join(self.pod_dir(pod_id), "pod.json"), PodRecord, f"pod {pod_id}")

    def load_container(self, ctr_id: str) -> ContainerRecord:
        """:raise NotFound: unknown container. :raise CorruptState: unreadable record."""
        return self._load(os.path.join(self.container_dir(ctr_id), "container.json"), ContainerRecord,
                          f"container {ctr_id}")

    @staticmethod
    def _ids(directory: str) -> list[str]:
        try:
            return sorted(e.name for e in os.scandir(directory) if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            return []

    def pod_ids(self) -> list[str]:
        return self._ids(self.pods_dir)

    def container_ids(self) -> list[str]:
        return self._ids(self.containers_dir)

    def pods(self) -> list[PodRecord]:
        """All readable pod records, oldest first (corrupt ones are logged and skipped)."""
        return sorted(self._all(self.pod_ids(), self.load_pod), key=lambda p: p.created_at)

    def containers(self, pod_id: Optional[str] = None) -> list[ContainerRecord]:
        """All readable container records (of one pod when ``pod_id`` is given), oldest first."""
        found = self._all(self.container_ids(), self.load_container)
        return sorted((c for c in found if pod_id is None or c.pod_id == pod_id), key=lambda c: c.created_at)

    @staticmethod
    def _all(ids: list[str], load: Any) -> list[Any]:
        records = []
        for item in ids:
            try:
                records.append(load(item))
            except NotFound:
                continue
            except (CorruptState, InvalidArgument) as err:
                log.warning("skipping %s: %s", item, err)
        return records

    def resolve_pod(self, prefix: str) -> str:
        """Full pod id for a unique prefix. :raise NotFound, InvalidArgument:"""
        return resolve_prefix(prefix, self.pod_ids(), "pod")

    def resolve_container(self, prefix: str) -> str:
        """Full container id for a unique prefix. :raise NotFound, InvalidArgument:"""
        return resolve_prefix(prefix, self.container_ids(), "container")

    # -- removal ---------------------------------------------------------------------------------
    def remove_pod(self, pod_id: str) -> None:
        shutil.rmtree(self.pod_dir(pod_id), ignore_errors=True)

    def remove_container(self, ctr_id: str) -> None:
        """Delete the container directory (bundle, overlay dirs, FIFOs). The caller has made sure
        nothing is mounted below it."""
        shutil.rmtree(self.container_dir(ctr_id), ignore_errors=True)
