"""Build a container's OCI runtime spec the way containerd 2.x's CRI plugin does for a sandboxed runtime.

containerd writes ``config.json`` into the bundle before task Create; the task server only adapts
it. So kuasar-ctl, standing in for containerd, must produce the same spec: containerd's default
Unix spec minus ``/run``, minus rlimits and seccomp, plus CRI's process args/env/cwd, the
read-only ``/sys/fs/cgroup`` mount, the config's bind mounts (sorted by depth), the pod's
namespaces as ``/proc/<sandbox pid>/ns/<type>``, ``linux.cgroupsPath`` under the pod's
cgroup_parent, resources, the CRI annotations and an oom_score_adj never below our own
(``restrict_oom_score_adj = true``). References: containerd ``pkg/oci/spec.go``
(populateDefaultUnixSpec) and ``internal/cri/{server/container_create_linux.go,opts/spec_linux*.go}``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl.config import ContainerConfig, MountSpec, NamespaceOptions, effective_namespace_options
from kuasar_shared.errors import InvalidArgument

__all__ = ["OCI_VERSION", "DEFAULT_PATH_ENV", "DEFAULT_CAPABILITIES", "ImageConfig", "SpecInputs",
           "build_container_spec", "exec_process_spec", "cgroups_path", "pod_hostname"]

OCI_VERSION = "1.1.0"
DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_CAPABILITIES = ("CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
                        "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
                        "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE")
_MASKED_PATHS = ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                 "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                 "/sys/devices/virtual/powercap", "/proc/scsi"]
_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
_POD, _CONTAINER, _NODE, _TARGET = 0, 1, 2, 3
_PROPAGATION_OPTION = {0: "rprivate", 1: "rslave", 2: "rshared"}


@dataclass(frozen=True)
class ImageConfig:
    """The parts of an image config CRI uses (the stand-in images are plain rootfs directories)."""

    env: tuple[str, ...] = (DEFAULT_PATH_ENV,)
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ("sh",)
    working_dir: str = ""


@dataclass(frozen=True)
class SpecInputs:
    """Everything besides the two configs that containerd knows when it builds the spec."""

    container_id: str
    sandbox_id: str
    #: pid from Controller.Start/Status; 0 is passed through (runc-task maps /proc/0/ns/* to the pod's)
    sandbox_pid: int
    image_name: str
    image: ImageConfig = ImageConfig()
    #: containerd's sandbox files (/etc/hostname, /etc/hosts, /etc/resolv.conf) as host paths
    extra_mounts: tuple[MountSpec, ...] = ()
    #: our own /proc/self/oom_score_adj: the floor for the container's
    oom_score_adj_floor: int = 0
    #: whether the memory cgroup has memsw (then swap = limit, as containerd does)
    swap_accounting: bool = False


def cgroups_path(cgroup_parent: str, container_id: str) -> str:
    """``linux.cgroupsPath`` with the cgroupfs driver: ``<parent>/<id>`` (empty without a parent)."""
    return os.path.join(cgroup_parent, container_id) if cgroup_parent else ""


def _set_env(env: list[str], values: Sequence[str]) -> None:
    """containerd's replaceOrAppendEnvValues: a later KEY=... replaces an earlier one in place."""
    for item in values:
        key = item.split("=", 1)[0]
        for i, old in enumerate(env):
            if old.split("=", 1)[0] == key:
                env[i] = item
                break
        else:
            env.append(item)


def _process_args(ctr: ContainerConfig, image: ImageConfig) -> list[str]:
    """CRI WithProcessArgs: command+args, else image entrypoint + (args or image cmd)."""
    if ctr.command:
        return list(ctr.command) + list(ctr.args)
    if ctr.args:
        return list(image.entrypoint) + list(ctr.args)
    args = list(image.entrypoint) + list(image.cmd)
    if not args:
        raise InvalidArgument(f"container {ctr.name!r}: no command specified and the image has none")
    return args


def _capabilities(ctr: ContainerConfig) -> list[str]:
    def norm(cap: str) -> str:
        cap = cap.upper()
        return cap if cap.startswith("CAP_") or cap == "ALL" else "CAP_" + cap
    caps = list(DEFAULT_CAPABILITIES)
    for cap in map(norm, ctr.add_capabilities):
        if cap == "ALL":
            raise InvalidArgument(f"container {ctr.name!r}: add_capabilities ALL is not supported")
        if cap not in caps:
            caps.append(cap)
    drops = set(map(norm, ctr.drop_capabilities))
    return [] if "ALL" in drops else [c for c in caps if c not in drops]


def _default_mounts() -> list[dict[str, Any]]:
    """containerd's default Unix mounts without /run (CRI WithoutRunMount)."""
    return [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]


def _clean(path: str) -> str:
    return os.path.normpath(path) if path else path


def _mounts(ctr: ContainerConfig, extra: Sequence[MountSpec], spec_linux: dict[str, Any]) -> list[dict[str, Any]]:
    """CRI WithMounts: defaults (minus overridden, minus /dev/* under a supplied /dev), the cgroup
    mount, then config mounts + extra mounts sorted by path depth as rbind mounts."""
    mounts = list(ctr.mounts)
    configured = {_clean(m.container_path) for m in ctr.mounts}
    mounts += [m for m in extra if _clean(m.container_path) not in configured]
    mounts.sort(key=lambda m: len([p for p in _clean(m.container_path).split("/") if p]))
    targets = {_clean(m.container_path) for m in mounts}
    result = [m for m in _default_mounts() + [
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}]
        if m["destination"] not in targets and not ("/dev" in targets and m["destination"].startswith("/dev/"))]
    for mount in mounts:
        source = mount.host_path
        if not os.path.exists(source):
            os.makedirs(source, mode=0o755, exist_ok=True)
        source = os.path.realpath(source)
        options = ["rbind", _PROPAGATION_OPTION.get(mount.propagation, "rprivate"),
                   "ro" if mount.readonly else "rw"]
        if mount.propagation == 2:
            spec_linux["rootfsPropagation"] = "rshared"
        elif mount.propagation == 1 and spec_linux.get("rootfsPropagation") != "rshared":
            spec_linux["rootfsPropagation"] = "rslave"
        result.append({"destination": mount.container_path, "type": "bind", "source": source, "options": options})
    return result


def _namespaces(ns: NamespaceOptions, sandbox_pid: int) -> list[dict[str, str]]:
    """Default [pid, ipc, uts, mount, network] with the pod's paths (CRI WithPodNamespaces);
    NODE modes drop the entry (host namespace); pid CONTAINER keeps a new pid namespace."""
    proc = f"/proc/{sandbox_pid}/ns/"
    result: list[dict[str, str]] = []
    if ns.pid == _POD:
        result.append({"type": "pid", "path": proc + "pid"})
    elif ns.pid == _CONTAINER:
        result.append({"type": "pid"})
    elif ns.pid == _TARGET:
        raise InvalidArgument("pid namespace mode TARGET is not supported by kuasar-ctl")
    if ns.ipc != _NODE:
        result.append({"type": "ipc", "path": proc + "ipc"})
    result.append({"type": "uts", "path": proc + "uts"})
    result.append({"type": "mount"})
    if ns.network != _NODE:
        result.append({"type": "network", "path": proc + "net"})
    return result


def _resources(res: Any, swap_accounting: bool) -> dict[str, Any]:
    """CRI WithResources on cgroup v1: only the values that are set."""
    out: dict[str, Any] = {"devices": [{"allow": False, "access": "rwm"}]}
    cpu: dict[str, Any] = {}
    for key, name in (("cpu_shares", "shares"), ("cpu_quota", "quota"), ("cpu_period", "period"),
                      ("cpuset_cpus", "cpus"), ("cpuset_mems", "mems")):
        if getattr(res, key):
            cpu[name] = getattr(res, key)
    if cpu:
        out["cpu"] = cpu
    memory: dict[str, Any] = {}
    if res.memory_limit_in_bytes:
        memory["limit"] = res.memory_limit_in_bytes
        if swap_accounting and not res.memory_swap_limit_in_bytes:
            memory["swap"] = res.memory_limit_in_bytes
    if res.memory_swap_limit_in_bytes:
        memory["swap"] = res.memory_swap_limit_in_bytes
    if memory:
        out["memory"] = memory
    return out


def build_container_spec(ctr: ContainerConfig, pod: api_pb2.PodSandboxConfig, inputs: SpecInputs) -> dict[str, Any]:
    """The OCI runtime spec (a JSON-ready dict, ``root.path = "rootfs"``) for one container.

    Creates missing hostPath mount sources (0755) and resolves their symlinks, like containerd.

    :raise InvalidArgument: for settings kuasar-ctl cannot honour (privileged containers, pid
        mode TARGET, ``add_capabilities: [ALL]``) or a container without any command.
    """
    if ctr.privileged:
        raise InvalidArgument(f"container {ctr.name!r}: privileged containers are not supported by kuasar-ctl")
    ns = effective_namespace_options(ctr, pod)
    env = [DEFAULT_PATH_ENV]
    _set_env(env, ["HOSTNAME=" + pod_hostname(pod)])
    _set_env(env, list(inputs.image.env))
    _set_env(env, [f"{k}={v}" for k, v in ctr.envs])
    caps = _capabilities(ctr)
    uid = ctr.run_as_user if ctr.run_as_user is not None else 0
    gid = ctr.run_as_group if ctr.run_as_group is not None else 0
    process: dict[str, Any] = {
        "user": {"uid": uid, "gid": gid, "additionalGids": sorted({gid, *ctr.supplemental_groups})},
        "args": _process_args(ctr, inputs.image),
        "env": env,
        "cwd": ctr.working_dir or inputs.image.working_dir or "/",
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "oomScoreAdj": max(ctr.resources.oom_score_adj, inputs.oom_score_adj_floor),
    }
    if ctr.tty:
        process["terminal"] = True
    if ctr.no_new_privs:
        process["noNewPrivileges"] = True
    linux: dict[str, Any] = {
        "resources": _resources(ctr.resources, inputs.swap_accounting),
        "namespaces": _namespaces(ns, inputs.sandbox_pid),
        "maskedPaths": list(_MASKED_PATHS),
        "readonlyPaths": list(_READONLY_PATHS),
    }
    path = cgroups_path(pod.linux.cgroup_parent, inputs.container_id)
    if path:
        linux["cgroupsPath"] = path
    extra = list(inputs.extra_mounts)
    if ns.ipc == _NODE:
        extra.append(MountSpec(container_path="/dev/shm", host_path="/dev/shm"))
    spec: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": "rootfs", **({"readonly": True} if ctr.readonly_rootfs else {})},
        "mounts": _mounts(ctr, extra, linux),
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.container-name": ctr.name,
            "io.kubernetes.cri.image-name": inputs.image_name,
            "io.kubernetes.cri.sandbox-id": inputs.sandbox_id,
            "io.kubernetes.cri.sandbox-name": pod.metadata.name,
            "io.kubernetes.cri.sandbox-namespace": pod.metadata.namespace,
            "io.kubernetes.cri.sandbox-uid": pod.metadata.uid,
        },
        "linux": linux,
    }
    return spec


def exec_process_spec(container_spec: dict[str, Any], args: Sequence[str], tty: bool = False) -> dict[str, Any]:
    """The OCI Process containerd sends in ExecProcessRequest.spec: the container's process with
    new args and terminal flag (CRI execInternal copies spec.Process)."""
    if not args:
        raise InvalidArgument("exec needs a command")
    process = dict(container_spec.get("process") or {})
    process["args"] = list(args)
    process["terminal"] = tty
    if not tty:
        process.pop("terminal")
    return process


def pod_hostname(pod: api_pb2.PodSandboxConfig) -> str:
    """The pod's hostname: the config's, else the node's (containerd uses os.Hostname)."""
    return pod.hostname or os.uname().nodename
