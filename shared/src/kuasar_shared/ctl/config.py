"""crictl-format pod and container configuration files (JSON or YAML) for kuasar-ctl.

The pod config becomes the CRI ``runtime.v1.PodSandboxConfig`` message that containerd sends to a
sandboxer inside ``ControllerCreateRequest.options``; the container config only shapes the OCI
spec built on this side, so it is read into plain dataclasses. Field names are crictl's
(snake_case); namespace modes may be numbers (0 POD, 1 CONTAINER, 2 NODE, 3 TARGET) or names.
Every error names the file and the key so a person can fix it. PyYAML comes with the extra
``kuasar-shared[ctl]`` (RPM: kuasar-ctl) and is imported when a YAML file is read; JSON files need none.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Mapping, Optional

from google.protobuf import json_format

from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.errors import FailedPrecondition, InvalidArgument

__all__ = ["NamespaceOptions", "Resources", "MountSpec", "ContainerConfig", "load_document",
           "load_pod_config", "load_container_config", "pod_namespace_options",
           "effective_namespace_options", "NAMESPACE_MODES"]

log = logging.getLogger(__name__)

NAMESPACE_MODES = {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3}
_PROPAGATION = {"PROPAGATION_PRIVATE": 0, "PROPAGATION_HOST_TO_CONTAINER": 1, "PROPAGATION_BIDIRECTIONAL": 2}
_UNKNOWN_FIELD = re.compile(r'has no field named "([^"]+)"')


def _yaml(path: str) -> ModuleType:
    """PyYAML, or an error naming what to install."""
    try:
        import yaml
    except ImportError:
        raise FailedPrecondition(f"{path}: reading YAML needs PyYAML, which is not installed: install "
                                 "kuasar-shared[ctl] (pip) or kuasar-ctl (RPM), or give the file as JSON") from None
    return yaml


def load_document(path: str) -> dict[str, Any]:
    """Read a JSON or YAML file holding one mapping.

    :raise InvalidArgument: when the file is missing, unreadable, not JSON/YAML or not a mapping;
        the message names the file (and line for YAML syntax errors).
    """
    try:
        with open(path, "r", encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise InvalidArgument(f"{path}: cannot read config file: {err.strerror or err}") from err
    if path.endswith(".json"):
        try:
            doc = json.loads(text)
        except ValueError as err:
            raise InvalidArgument(f"{path}: not valid JSON: {err}") from err
    else:
        yaml = _yaml(path)
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise InvalidArgument(f"{path}: not valid YAML/JSON: {err}".replace("\n", " ")) from err
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{path}: expected a mapping of config fields, got {type(doc).__name__}")
    return doc


def load_pod_config(path: str) -> api_pb2.PodSandboxConfig:
    """Parse a crictl pod config into ``runtime.v1.PodSandboxConfig``.

    Fields the CRI message does not have are dropped with a warning that names them.

    :raise InvalidArgument: for unreadable files, wrong value types, or a missing
        ``metadata.name``.
    """
    doc = load_document(path)
    msg = api_pb2.PodSandboxConfig()
    try:
        json_format.ParseDict(doc, msg)
    except json_format.ParseError as err:
        unknown = _UNKNOWN_FIELD.search(str(err))
        if not unknown:
            raise InvalidArgument(f"{path}: {err}") from err
        log.warning("%s: ignoring fields the CRI PodSandboxConfig does not have (first: %r)",
                    path, unknown.group(1))
        try:
            json_format.ParseDict(doc, msg, ignore_unknown_fields=True)
        except json_format.ParseError as err2:
            raise InvalidArgument(f"{path}: {err2}") from err2
    if not msg.metadata.name:
        raise InvalidArgument(f"{path}: metadata.name is required")
    return msg


@dataclass(frozen=True)
class NamespaceOptions:
    network: int = 0
    pid: int = 0
    ipc: int = 0
    target_id: str = ""


@dataclass(frozen=True)
class Resources:
    cpu_period: int = 0
    cpu_quota: int = 0
    cpu_shares: int = 0
    memory_limit_in_bytes: int = 0
    memory_swap_limit_in_bytes: int = 0
    oom_score_adj: int = 0
    cpuset_cpus: str = ""
    cpuset_mems: str = ""


#: the integer fields of :class:`Resources`, read from ``linux.resources`` by the same name
_RESOURCE_NUMBERS = ("cpu_period", "cpu_quota", "cpu_shares", "memory_limit_in_bytes", "memory_swap_limit_in_bytes",
                     "oom_score_adj")


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    readonly: bool = False
    propagation: int = 0


@dataclass(frozen=True)
class ContainerConfig:
    """What kuasar-ctl uses from a crictl container config."""

    name: str
    attempt: int = 0
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    working_dir: str = ""
    envs: tuple[tuple[str, str], ...] = ()
    mounts: tuple[MountSpec, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    log_path: str = ""
    stdin: bool = False
    tty: bool = False
    resources: Resources = Resources()
    #: None when the file does not set linux.security_context.namespace_options (then the pod's apply)
    namespace_options: Optional[NamespaceOptions] = None
    privileged: bool = False
    readonly_rootfs: bool = False
    no_new_privs: bool = False
    run_as_user: Optional[int] = None
    run_as_group: Optional[int] = None
    supplemental_groups: tuple[int, ...] = ()
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()


class _Reader:
    """Typed access to a nested mapping that names ``file: key`` in every error."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, expected: str, value: object) -> InvalidArgument:
        return InvalidArgument(f"{self.path}: {key}: expected {expected}, got {value!r}")

    def mapping(self, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
        value = doc.get(key.rsplit(".", 1)[-1])
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, "a mapping", value)
        return value

    def string(self, doc: Mapping[str, Any], key: str) -> str:
        value = doc.get(key.rsplit(".", 1)[-1], "")
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, "a string", value)
        return value

    def integer(self, doc: Mapping[str, Any], key: str, names: Optional[Mapping[str, int]] = None) -> int:
        value = doc.get(key.rsplit(".", 1)[-1], 0)
        if names and isinstance(value, str) and value.upper() in names:
            return names[value.upper()]
        if isinstance(value, bool) or not isinstance(value, int):
            expected = "an integer" + (" or one of " + "/".join(names) if names else "")
            raise self.fail(key, expected, value)
        return value

    def boolean(self, doc: Mapping[str, Any], key: str) -> bool:
        value = doc.get(key.rsplit(".", 1)[-1], False)
        if not isinstance(value, bool):
            raise self.fail(key, "true or false", value)
        return value

    def strings(self, doc: Mapping[str, Any], key: str) -> tuple[str, ...]:
        value = doc.get(key.rsplit(".", 1)[-1]) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a list of strings", value)
        return tuple(value)

    def string_map(self, doc: Mapping[str, Any], key: str) -> dict[str, str]:
        value = self.mapping(doc, key)
        if not all(isinstance(v, str) for v in value.values()):
            raise self.fail(key, "a mapping of strings", value)
        return {str(k): v for k, v in value.items()}


def load_container_config(path: str) -> ContainerConfig:
    """Parse a crictl container config.

    :raise InvalidArgument: for unreadable files, wrong value types, a missing
        ``metadata.name`` or ``image.image``; the message names the file and key.
    """
    doc = load_document(path)
    r = _Reader(path)
    meta = r.mapping(doc, "metadata")
    name = r.string(meta, "metadata.name")
    if not name:
        raise InvalidArgument(f"{path}: metadata.name is required")
    image = r.string(r.mapping(doc, "image"), "image.image")
    if not image:
        raise InvalidArgument(f"{path}: image.image is required (a rootfs directory or 'busybox')")
    envs = []
    for i, item in enumerate(doc.get("envs") or []):
        if not isinstance(item, dict):
            raise r.fail(f"envs[{i}]", "a mapping with key/value", item)
        envs.append((r.string(item, f"envs[{i}].key"), r.string(item, f"envs[{i}].value")))
    mounts = []
    for i, item in enumerate(doc.get("mounts") or []):
        if not isinstance(item, dict):
            raise r.fail(f"mounts[{i}]", "a mapping", item)
        mount = MountSpec(container_path=r.string(item, f"mounts[{i}].container_path"),
                          host_path=r.string(item, f"mounts[{i}].host_path"),
                          readonly=r.boolean(item, f"mounts[{i}].readonly"),
                          propagation=r.integer(item, f"mounts[{i}].propagation", _PROPAGATION))
        if not mount.container_path.startswith("/") or not mount.host_path.startswith("/"):
            raise r.fail(f"mounts[{i}]", "absolute container_path and host_path", item)
        mounts.append(mount)
    linux = r.mapping(doc, "linux")
    res = r.mapping(linux, "linux.resources")
    numbers = {k: r.integer(res, f"linux.resources.{k}") for k in _RESOURCE_NUMBERS if k in res}
    resources = Resources(cpuset_cpus=r.string(res, "linux.resources.cpuset_cpus"),
                          cpuset_mems=r.string(res, "linux.resources.cpuset_mems"), **numbers)
    sec = r.mapping(linux, "linux.security_context")
    ns_options = None
    if sec.get("namespace_options") is not None:
        ns = r.mapping(sec, "linux.security_context.namespace_options")
        ns_options = NamespaceOptions(
            network=r.integer(ns, "linux.security_context.namespace_options.network", NAMESPACE_MODES),
            pid=r.integer(ns, "linux.security_context.namespace_options.pid", NAMESPACE_MODES),
            ipc=r.integer(ns, "linux.security_context.namespace_options.ipc", NAMESPACE_MODES),
            target_id=r.string(ns, "linux.security_context.namespace_options.target_id"))
    caps = r.mapping(sec, "linux.security_context.capabilities")

    def optional_id(key: str) -> Optional[int]:
        value = r.mapping(sec, f"linux.security_context.{key}")
        return r.integer(value, f"linux.security_context.{key}.value") if value else None

    return ContainerConfig(
        name=name, attempt=r.integer(meta, "metadata.attempt"), image=image,
        command=r.strings(doc, "command"), args=r.strings(doc, "args"),
        working_dir=r.string(doc, "working_dir"), envs=tuple(envs), mounts=tuple(mounts),
        labels=r.string_map(doc, "labels"), annotations=r.string_map(doc, "annotations"),
        log_path=r.string(doc, "log_path"), stdin=r.boolean(doc, "stdin"), tty=r.boolean(doc, "tty"),
        resources=resources, namespace_options=ns_options,
        privileged=r.boolean(sec, "linux.security_context.privileged"),
        readonly_rootfs=r.boolean(sec, "linux.security_context.readonly_rootfs"),
        no_new_privs=r.boolean(sec, "linux.security_context.no_new_privs"),
        run_as_user=optional_id("run_as_user"), run_as_group=optional_id("run_as_group"),
        supplemental_groups=tuple(int(g) for g in sec.get("supplemental_groups") or []),
        add_capabilities=r.strings(caps, "linux.security_context.capabilities.add_capabilities"),
        drop_capabilities=r.strings(caps, "linux.security_context.capabilities.drop_capabilities"))


def pod_namespace_options(pod: api_pb2.PodSandboxConfig) -> NamespaceOptions:
    """The pod's namespace modes as a :class:`NamespaceOptions`."""
    ns = pod.linux.security_context.namespace_options
    return NamespaceOptions(network=ns.network, pid=ns.pid, ipc=ns.ipc, target_id=ns.target_id)


def effective_namespace_options(ctr: ContainerConfig, pod: api_pb2.PodSandboxConfig) -> NamespaceOptions:
    """The container's own namespace options, or the pod's when the file sets none (kubelet copies
    the pod's into every container config; crictl users usually leave them out)."""
    return ctr.namespace_options if ctr.namespace_options is not None else pod_namespace_options(pod)

