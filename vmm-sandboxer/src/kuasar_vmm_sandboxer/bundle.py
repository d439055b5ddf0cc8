"""Container bundles for the guest: rootfs and volumes on the host share, config.json in guest paths.

The guest sees ``<pod dir>/shared`` as ``/run/kuasar/state`` and runs ``runc`` on the bundle
``/run/kuasar/state/<cid>``. Before the guest's task Create (relay, stock containerd) or ahead of it
(``extensions.tasks``), the host:

- mounts the rootfs (the engine's mounts, e.g. overlay, or a bind of the host bundle's rootfs) at
  ``shared/<cid>/rootfs``; host mounts below the share are visible in the guest through 9p/virtiofs;
- bind-mounts every host bind-mount source at ``shared/<cid>/mounts/<n>`` and points the spec there
  (``/dev/shm`` binds become a private tmpfs);
- binds the pod's ``hostname``, ``hosts`` and ``resolv.conf`` (written on the share at pod Create)
  at ``/etc/...`` when the spec mounts nothing there, read-only with a read-only rootfs: containerd
  adds these mounts only for its own podsandbox pods, so without them a container of a stock
  containerd pod has no ``/etc/resolv.conf`` (critest's DNS config spec);
- rewrites the spec like upstream: no network/cgroup namespace (the VM is the pod's), shared IPC/UTS/PID
  namespaces at ``/run/sandbox-ns/<type>``, no hooks, AppArmor/SELinux labels or cpuset pinning (host
  notions), ``root.path = "rootfs"``; and writes it atomically as ``shared/<cid>/config.json``.

Only engine-supplied data is used here (the guest never names a host path), and ids are validated.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from typing import Any, Optional, Sequence

from kuasar_shared.errors import InvalidArgument, KuasarError
from kuasar_shared.ids import validate_id
from kuasar_shared.mounts import MountError, mount, mount_all, mountinfo, unmount_recursive
from kuasar_shared.statefiles import write_json_atomic
from kuasar_shared.values import Mount

__all__ = ["GUEST_STATE", "SANDBOX_NS", "MAX_SPEC", "POD_FILES", "container_dir", "guest_spec", "prepare",
           "is_prepared", "remove", "read_spec", "guest_bundle"]

log = logging.getLogger(__name__)

GUEST_STATE = "/run/kuasar/state"
SANDBOX_NS = "/run/sandbox-ns"
#: largest config.json we read from an engine bundle
MAX_SPEC = 4 << 20
_PREPARED = ".prepared"


def container_dir(pod_dir: str, cid: str) -> str:
    return os.path.join(pod_dir, "shared", validate_id(cid, "container"))


def guest_bundle(cid: str) -> str:
    return "%s/%s" % (GUEST_STATE, validate_id(cid, "container"))


def read_spec(bundle: str) -> dict[str, Any]:
    """The engine bundle's config.json. :raise InvalidArgument: missing, too large or not a JSON object."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SPEC + 1)
    except OSError as err:
        raise InvalidArgument("cannot read %s: %s" % (path, err.strerror)) from err
    if len(data) > MAX_SPEC:
        raise InvalidArgument("%s is larger than %d bytes" % (path, MAX_SPEC))
    try:
        spec = json.loads(data)
    except ValueError as err:
        raise InvalidArgument("%s is not valid JSON: %s" % (path, err)) from err
    if not isinstance(spec, dict):
        raise InvalidArgument("%s must hold a JSON object" % path)
    return spec


def _is_bind(m: dict[str, Any]) -> bool:
    options = m.get("options") or []
    return m.get("type") == "bind" or "bind" in options or "rbind" in options


def guest_spec(spec: dict[str, Any], cid: str) -> dict[str, Any]:
    """The spec with upstream's guest rewrites (mount sources are handled by :func:`prepare`)."""
    out = copy.deepcopy(spec)
    out["root"] = {**(out.get("root") or {}), "path": "rootfs"}
    out.pop("hooks", None)
    process = out.get("process") or {}
    process.pop("apparmorProfile", None)
    process.pop("selinuxLabel", None)
    linux = out.setdefault("linux", {})
    linux.pop("mountLabel", None)
    namespaces = []
    for ns in linux.get("namespaces") or []:
        kind = ns.get("type")
        if kind in ("network", "cgroup"):
            continue
        if kind in ("ipc", "uts", "pid") and ns.get("path"):
            ns = {"type": kind, "path": "%s/%s" % (SANDBOX_NS, kind)}
        namespaces.append(ns)
    linux["namespaces"] = namespaces
    cpu = (linux.get("resources") or {}).get("cpu")
    if isinstance(cpu, dict):
        cpu.pop("cpus", None)
        cpu.pop("mems", None)
    return out


def _below(source: str) -> list[str]:
    """Host mount points strictly below the directory ``source``, parents first."""
    root = os.path.realpath(source)
    found = {info.mountpoint: info for info in mountinfo() if info.mountpoint.startswith(root + "/")}
    return sorted(found, key=lambda p: p.count("/"))


def _bind_volumes(spec: dict[str, Any], host_dir: str, cid: str) -> None:
    """Bind host sources of bind mounts under ``host_dir/mounts`` and point the spec at guest paths.

    A volume is bound without the mounts below its source (``mounts/<n>``); each of those gets its
    own bind beside it (``mounts/<n>.<k>``) and its own spec mount after the volume, with its own
    ``ro``/``rw`` (``ro`` for a recursive read-only volume), as on a node, where ``ro`` of a bind
    covers the bind alone (critest: non-recursive readonly mounts). Nothing of ours is mounted on
    the source's own folders, so the node can unmount and remove them while the pod runs, as with
    runc (a copy below the volume's bind would sit on the same directory and make it busy).
    """
    mounts_dir = os.path.join(host_dir, "mounts")
    out: list[Any] = []
    for n, m in enumerate(spec.get("mounts") or []):
        out.append(m)
        if not _is_bind(m):
            continue
        source = str(m.get("source") or "")
        if source == "/dev/shm" or m.get("destination") == "/dev/shm":
            m.update(type="tmpfs", source="shm", options=["nosuid", "noexec", "nodev", "mode=1777"])
            continue
        if not os.path.isabs(source) or not os.path.exists(source):
            raise InvalidArgument("container %s: bind mount source %r does not exist" % (cid, source))
        os.makedirs(mounts_dir, mode=0o711, exist_ok=True)
        subs = _below(source) if os.path.isdir(source) else []
        recursive_ro = "rro" in (m.get("options") or [])
        flags = {info.mountpoint: info.options.split(",") for info in mountinfo()}
        for k, sub in enumerate([None, *subs]):
            what = source if sub is None else sub
            name = str(n) if sub is None else "%d.%d" % (n, k - 1)
            point = os.path.join(mounts_dir, name)
            if os.path.isdir(what):
                os.makedirs(point, exist_ok=True)
            else:
                with open(point, "a"):
                    pass
            mount(what, point, "", ["bind"])
            if sub is None:
                m["source"] = "%s/%s/mounts/%s" % (GUEST_STATE, cid, name)
                m["type"] = "bind"
                continue
            ro = recursive_ro or "ro" in flags.get(sub, [])
            rel = os.path.relpath(sub, os.path.realpath(source))
            out.append({"destination": os.path.join(str(m.get("destination")), rel),
                        "type": "bind", "source": "%s/%s/mounts/%s" % (GUEST_STATE, cid, name),
                        "options": ["rbind", "rprivate", "ro" if ro else "rw"]})
    if "mounts" in spec:
        spec["mounts"] = out


#: container path -> the pod file on the share (see guestfiles.py)
POD_FILES = {"/etc/hostname": "hostname", "/etc/hosts": "hosts", "/etc/resolv.conf": "resolv.conf"}


def _bind_pod_files(spec: dict[str, Any], pod_dir: str) -> None:
    """Bind the pod's files from the share where the spec mounts nothing (as containerd's podsandbox)."""
    mounts = spec.setdefault("mounts", [])
    if not isinstance(mounts, list):
        raise InvalidArgument("OCI spec mounts is not a list")
    taken = {os.path.normpath(str(m.get("destination", ""))) for m in mounts if isinstance(m, dict)}
    readonly = bool((spec.get("root") or {}).get("readonly"))
    for destination, name in POD_FILES.items():
        if destination in taken or not os.path.isfile(os.path.join(pod_dir, "shared", name)):
            continue
        mounts.append({"destination": destination, "type": "bind", "source": "%s/%s" % (GUEST_STATE, name),
                       "options": ["rbind", "rprivate", "ro" if readonly else "rw"]})


def prepare(pod_dir: str, cid: str, spec: dict[str, Any], rootfs: Sequence[Mount],
            bundle: Optional[str] = None) -> str:
    """Make ``shared/<cid>`` ready for the guest; idempotent (an already prepared container is kept).

    :param rootfs: the engine's rootfs mounts; when empty the host ``bundle``'s ``root.path`` is bound.
    :raise InvalidArgument: no rootfs at all, a missing bind source, or a mount the kernel refuses.
        Everything done so far is undone.
    :return: the guest bundle path.
    """
    host_dir = container_dir(pod_dir, cid)
    if is_prepared(pod_dir, cid):
        return guest_bundle(cid)
    os.makedirs(host_dir, mode=0o711, exist_ok=True)
    target = os.path.join(host_dir, "rootfs")
    os.makedirs(target, exist_ok=True)
    out = guest_spec(spec, cid)
    try:
        if rootfs:
            mount_all(list(rootfs), target)
        else:
            root = str((spec.get("root") or {}).get("path") or "")
            if not bundle or not root:
                raise InvalidArgument("container %s: no rootfs mounts and no bundle rootfs" % cid)
            source = root if os.path.isabs(root) else os.path.join(bundle, root)
            if not os.path.isdir(source):
                raise InvalidArgument("container %s: rootfs %s is not a directory" % (cid, source))
            mount(source, target, "", ["rbind"])
        _bind_volumes(out, host_dir, cid)
        _bind_pod_files(out, pod_dir)
        write_json_atomic(os.path.join(host_dir, "config.json"), out)
        with open(os.path.join(host_dir, _PREPARED), "w"):
            pass
    except MountError as err:
        remove(pod_dir, cid)
        raise InvalidArgument("container %s: %s" % (cid, err)) from err
    except BaseException:
        remove(pod_dir, cid)
        raise
    log.info("container %s prepared in %s", cid, host_dir)
    return guest_bundle(cid)


def is_prepared(pod_dir: str, cid: str) -> bool:
    return os.path.exists(os.path.join(container_dir(pod_dir, cid), _PREPARED))


def remove(pod_dir: str, cid: str) -> None:
    """Unmount everything under ``shared/<cid>`` and delete it; idempotent, failures are logged."""
    host_dir = container_dir(pod_dir, cid)
    if not os.path.lexists(host_dir):
        return
    try:
        unmount_recursive(host_dir)
        shutil.rmtree(host_dir)
    except (KuasarError, OSError) as err:
        log.error("container %s: cannot remove %s: %s", cid, host_dir, err)
