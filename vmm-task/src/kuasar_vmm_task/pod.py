"""Pod-level set-up inside the guest (SetupSandbox): sysctls, hostname and the pod namespaces.

The host sends the CRI PodSandboxConfig as JSON (upstream: serde of the Rust CRI types, snake_case;
protobuf JSON camelCase is accepted too). The pod's IPC and UTS namespaces (and its PID namespace
when ``namespace_options.pid == POD``) are created once with busybox ``unshare`` and pinned at
``/run/sandbox-ns/<type>``, where every container's spec then points.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional

from kuasar_shared import mounts, process
from kuasar_shared.errors import Internal, InvalidArgument

from kuasar_vmm_task.boot import ENV, SHARE_DIR

__all__ = ["PodConfig", "parse_pod_config", "apply_sysctls", "namespaced_sysctls", "pod_hostname", "NS_DIR",
           "PodNamespaces"]

log = logging.getLogger(__name__)

NS_DIR = "/run/sandbox-ns"
_SYSCTL_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-/]*$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.\-]{0,62})$")
#: CRI NamespaceMode
_POD, _CONTAINER, _NODE, _TARGET = 0, 1, 2, 3
_MODES = {"POD": _POD, "CONTAINER": _CONTAINER, "NODE": _NODE, "TARGET": _TARGET}


@dataclass(frozen=True)
class PodConfig:
    hostname: str = ""
    sysctls: Dict[str, str] = field(default_factory=dict)
    share_pid: bool = False
    pod_id: str = ""


def _get(obj: Mapping[str, Any], snake: str) -> Any:
    if snake in obj:
        return obj[snake]
    parts = snake.split("_")
    return obj.get(parts[0] + "".join(p.title() for p in parts[1:]))


def _mode(value: Any) -> int:
    if isinstance(value, str):
        return _MODES.get(value.upper(), _POD)
    return int(value or 0)


def parse_pod_config(raw: bytes) -> PodConfig:
    """Decode the JSON PodSandboxConfig.

    :raise InvalidArgument: not JSON, not an object, or a hostile hostname/sysctl key.
    """
    try:
        data = json.loads(raw.decode() or "{}")
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidArgument(f"PodSandboxConfig is not JSON: {err}") from err
    if not isinstance(data, dict):
        raise InvalidArgument("PodSandboxConfig must be a JSON object")
    hostname = str(_get(data, "hostname") or "")
    if hostname and not _HOSTNAME.match(hostname):
        raise InvalidArgument(f"invalid pod hostname {hostname!r}")
    linux = _get(data, "linux") or {}
    sysctls = {str(k): str(v) for k, v in (_get(linux, "sysctls") or {}).items()}
    for key in sysctls:
        if not _SYSCTL_KEY.match(key) or ".." in key:
            raise InvalidArgument(f"invalid sysctl name {key!r}")
    options = _get(_get(linux, "security_context") or {}, "namespace_options") or {}
    metadata = _get(data, "metadata") or {}
    return PodConfig(hostname=hostname, sysctls=sysctls, share_pid=_mode(_get(options, "pid")) == _POD,
                     pod_id=str(_get(metadata, "uid") or _get(metadata, "name") or ""))


def apply_sysctls(sysctls: Mapping[str, str], proc_sys: str = "/proc/sys") -> None:
    """Write each pod sysctl.

    :raise InvalidArgument: the kernel refuses one (unknown key or bad value), naming it.
    """
    for key, value in sysctls.items():
        path = os.path.join(proc_sys, key.replace(".", "/"))
        try:
            with open(path, "w") as handle:
                handle.write(value)
        except OSError as err:
            raise InvalidArgument(f"cannot set sysctl {key}={value}: {err.strerror}") from err


#: sysctl prefixes that live in the IPC or UTS namespace: written again inside the pod's own namespaces
_NAMESPACED_SYSCTLS = ("kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.", "kernel.hostname",
                       "kernel.domainname")


def namespaced_sysctls(sysctls: Mapping[str, str]) -> Dict[str, str]:
    """The sysctls of ``sysctls`` that belong to an IPC or UTS namespace (the pod's, not the agent's)."""
    return {k: v for k, v in sysctls.items() if k.replace("/", ".").startswith(_NAMESPACED_SYSCTLS)}


def pod_hostname(config: PodConfig, share: str = SHARE_DIR) -> str:
    """The host-written ``<share>/hostname`` wins over the config (upstream behaviour)."""
    try:
        with open(os.path.join(share, "hostname")) as handle:
            name = handle.read().strip()
        if _HOSTNAME.match(name):
            return name
    except OSError:
        pass
    return config.hostname or "localhost"


class PodNamespaces:
    """The pinned IPC/UTS(/PID) namespaces of the one pod this VM runs.

    With a shared PID namespace a ``busybox sleep`` stays alive as the namespace's PID 1 (owned here
    and killed by :meth:`close`). Its process name is ``busybox``, not ``sleep``: containers see it
    (the pause process of a containerd pod is named ``pause``), and a ``pgrep sleep`` of theirs must
    find only their own sleeps (critest's "execSync with timeout").
    """

    def __init__(self, ns_dir: str = NS_DIR) -> None:
        self.ns_dir = ns_dir
        self.holder: Optional[process.Process] = None
        self.types: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"<PodNamespaces {self.ns_dir} {','.join(self.types) or 'none'}>"

    async def create(self, hostname: str, share_pid: bool, sysctls: Optional[Mapping[str, str]] = None) -> None:
        """Create and pin the namespaces, setting the hostname inside the new UTS namespace.

        ``sysctls``: the pod's sysctls; those of the IPC and UTS namespaces (``kernel.shm*``,
        ``fs.mqueue.*``, ...) are written inside the new namespaces, where the containers see them
        (written in the agent's own namespaces they would never reach a container).

        :raise Internal: unshare failed (message carries its stderr).
        """
        os.makedirs(self.ns_dir, exist_ok=True)
        types = ("ipc", "uts", "pid") if share_pid else ("ipc", "uts")
        for t in types:
            open(os.path.join(self.ns_dir, t), "a").close()
        argv = ["unshare", f"--ipc={self.ns_dir}/ipc", f"--uts={self.ns_dir}/uts"]
        # after the hostname: KEY-PATH VALUE pairs, each written below /proc/sys in the new namespaces
        script = ('hostname "$1" && shift && while [ $# -gt 1 ]; do printf %s "$2" > "/proc/sys/$1" || '
                  '{ echo "cannot set sysctl $1 in the pod namespaces" >&2; exit 1; }; shift 2; done')
        pairs = [x for key, value in namespaced_sysctls(sysctls or {}).items()
                 for x in (key.replace(".", "/"), value)]
        if share_pid:
            # busybox's --pid=FILE pins the caller's PID namespace, not the new one; the holder's child
            # (the namespace's init) is pinned by _pin_pid instead
            argv += ["--pid", "-f"]
            script += "; exec busybox sleep 2147483647"
        argv += ["sh", "-c", script, "sh", hostname, *pairs]
        if share_pid:
            self.holder = process.spawn(argv, env=ENV)
            await self._pin_pid(os.path.join(self.ns_dir, "pid"))
        else:
            await process.run(argv, env=ENV, timeout=10)
        self.types = types
        log.info("pod namespaces %s pinned in %s (hostname %s)", ",".join(types), self.ns_dir, hostname)

    async def _pin_pid(self, path: str) -> None:
        """Bind the PID namespace of the holder's child (the pod namespace's init) onto ``path``."""
        own = os.stat("/proc/self/ns/pid").st_ino
        for _ in range(500):
            if self.holder is None or self.holder.returncode is not None:
                break
            for child in _children(self.holder.pid):
                ns = f"/proc/{child}/ns/pid"
                try:
                    if os.stat(ns).st_ino != own:
                        mounts.mount(ns, path, options=["bind"])
                        return
                except OSError:
                    continue
            await asyncio.sleep(0.01)
        raise Internal(f"the pod PID namespace was not pinned at {path}")

    async def close(self) -> None:
        """Kill the PID namespace's init (and so everything in it); the VM normally just ends."""
        if self.holder is None:
            return
        pid_ns = os.path.join(self.ns_dir, "pid")
        inode = os.stat(pid_ns).st_ino
        if inode == os.stat("/proc/self/ns/pid").st_ino:
            raise Internal(f"{pid_ns} is not a pinned pod PID namespace")
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}/ns/pid").st_ino == inode:
                        os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    continue
        self.holder.kill()
        await self.holder.wait()
        self.holder = None

    def path(self, ns_type: str) -> Optional[str]:
        """Pinned path for an OCI namespace type (ipc, uts, pid), or None."""
        return os.path.join(self.ns_dir, ns_type) if ns_type in self.types else None


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc/<pid>/task/*/children)."""
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                found += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return found
