"""Host-side work containerd does around the Sandbox and Task API calls, done by kuasar-ctl instead.

* the pod network namespace (containerd creates ``/var/run/netns/cni-<uuid>`` before
  Controller.Create and removes it at StopPodSandbox; no CNI here, only ``lo`` is brought up);
* the sandbox files bind-mounted into containers (``hostname``, ``hosts``, ``resolv.conf``);
* the image stand-in: a local rootfs directory becomes the overlay ``lowerdir`` of the single
  rootfs mount that containerd's overlayfs snapshotter would hand to task Create;
* clean-up: lazily unmount anything left below a container directory before it is deleted.
"""
from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import uuid
from typing import Optional

from kuasar_shared.api.cri.runtime.v1 import api_pb2
from kuasar_shared.ctl.config import MountSpec
from kuasar_shared.errors import Internal, NotFound

__all__ = ["NETNS_DIR", "create_netns", "remove_netns", "netns_problem", "write_sandbox_files", "sandbox_file_mounts",
           "resolve_image", "overlay_options", "mounts_below", "unmount_below", "own_oom_score_adj",
           "swap_accounting", "process_alive"]

NETNS_DIR = "/var/run/netns"
_DEFAULT_HOSTS = ("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n"
                  "ff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")
_MNT_DETACH = 2
_NS_GET_NSTYPE = 0xB703
_CLONE_NEWNET = 0x40000000


async def _ip(*args: str) -> None:
    proc = await asyncio.create_subprocess_exec("ip", *args, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    if proc.returncode:
        raise Internal(f"ip {' '.join(args)} failed: {err.decode().strip()}")


async def create_netns() -> str:
    """A new named network namespace with ``lo`` up; returns its path (``/var/run/netns/cni-<uuid>``).

    :raise Internal: when ``ip netns add`` fails.
    """
    name = f"cni-{uuid.uuid4()}"
    await _ip("netns", "add", name)
    try:
        await _ip("-n", name, "link", "set", "lo", "up")
    except Internal:
        await _ip("netns", "delete", name)
        raise
    return os.path.join(NETNS_DIR, name)


def netns_problem(path: str) -> str:
    """Why ``path`` is not a network namespace file (``""`` when it is one)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "no such network namespace"
    except OSError as err:
        return f"cannot open: {err.strerror}"
    try:
        kind = fcntl.ioctl(fd, _NS_GET_NSTYPE)
    except OSError:
        return "not a namespace file (expected e.g. /var/run/netns/NAME or /proc/PID/ns/net)"
    finally:
        os.close(fd)
    return "" if kind == _CLONE_NEWNET else "a namespace, but not a network namespace"


async def remove_netns(path: str) -> None:
    """Remove a namespace made by :func:`create_netns`; a missing one is fine."""
    if path and os.path.exists(path):
        await _ip("netns", "delete", os.path.basename(path))


def write_sandbox_files(pod_dir: str, pod: api_pb2.PodSandboxConfig, hostname: str) -> None:
    """Write ``hostname``, ``hosts`` and ``resolv.conf`` for the pod like containerd's
    setupSandboxFiles: host network pods get the host's /etc/hosts; DNS from dns_config, else
    the host's resolv.conf."""
    host_network = pod.linux.security_context.namespace_options.network == 2
    with open(os.path.join(pod_dir, "hostname"), "w") as f:
        f.write(hostname + "\n")
    hosts = _DEFAULT_HOSTS
    if host_network and os.path.exists("/etc/hosts"):
        with open("/etc/hosts") as src:
            hosts = src.read()
    with open(os.path.join(pod_dir, "hosts"), "w") as f:
        f.write(hosts)
    dns = pod.dns_config
    if dns.servers or dns.searches or dns.options:
        lines = [f"search {' '.join(dns.searches)}"] if dns.searches else []
        lines += [f"nameserver {s}" for s in dns.servers]
        lines += [f"options {' '.join(dns.options)}"] if dns.options else []
        resolv = "\n".join(lines) + "\n"
    else:
        try:
            with open("/etc/resolv.conf") as src:
                resolv = src.read()
        except OSError:
            resolv = ""
    with open(os.path.join(pod_dir, "resolv.conf"), "w") as f:
        f.write(resolv)


def sandbox_file_mounts(pod_dir: str, readonly_rootfs: bool) -> tuple[MountSpec, ...]:
    """containerd's extra container mounts for the sandbox files that exist in ``pod_dir``."""
    mounts = []
    for name, target in (("hostname", "/etc/hostname"), ("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf")):
        path = os.path.join(pod_dir, name)
        if os.path.exists(path):
            mounts.append(MountSpec(container_path=target, host_path=path, readonly=readonly_rootfs))
    return tuple(mounts)


def resolve_image(image: str, images_dir: str) -> str:
    """The rootfs directory standing in for ``image``: an absolute directory as is, else
    ``<images_dir>/<name>`` where name drops registry, repository path and tag
    (``docker.io/library/busybox:1.36`` -> ``busybox``).

    :raise NotFound: with the command that builds the busybox rootfs.
    """
    if image.startswith("/"):
        if os.path.isdir(image):
            return os.path.realpath(image)
        raise NotFound(f"image {image!r}: no such rootfs directory")
    name = image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]
    path = os.path.join(images_dir, name)
    if name and os.path.isdir(os.path.join(path, "bin")):
        return path
    raise NotFound(f"image {image!r}: no rootfs at {path} (no registry is reachable here; build one with "
                   f"`hack/make-busybox-rootfs.sh {os.path.join(images_dir, 'busybox')}` or give a rootfs directory)")


def overlay_options(lowerdir: str, upperdir: str, workdir: str) -> list[str]:
    """Mount options in the order containerd's overlayfs snapshotter sends them."""
    options = [f"workdir={workdir}", f"upperdir={upperdir}", f"lowerdir={lowerdir}"]
    if os.path.exists("/sys/module/overlay/parameters/index"):
        options.append("index=off")
    return options


def mounts_below(path: str) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = os.path.realpath(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def unmount_below(path: str) -> None:
    """Lazily unmount everything at or below ``path`` (leftovers of a task server that died).

    :raise Internal: when an unmount fails.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    for point in mounts_below(path):
        if libc.umount2(point.encode(), _MNT_DETACH) != 0:
            errno = ctypes.get_errno()
            raise Internal(f"cannot unmount {point}: {os.strerror(errno)}")


def own_oom_score_adj() -> int:
    """Our /proc/self/oom_score_adj: containers never get a lower one (restrict_oom_score_adj)."""
    with open("/proc/self/oom_score_adj") as f:
        return int(f.read().strip())


def swap_accounting(cgroup_root: str = "/sys/fs/cgroup") -> bool:
    """Whether memory+swap limits exist (cgroup v1 memsw / v2 memory.swap.max)."""
    return (os.path.exists(os.path.join(cgroup_root, "memory", "memory.memsw.limit_in_bytes"))
            or os.path.exists(os.path.join(cgroup_root, "memory.swap.max")))


def process_alive(pid: int, needle: Optional[str] = None) -> bool:
    """Whether ``pid`` runs (and, with ``needle``, its command line contains it: guards against
    pid reuse before signalling a recorded pid)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return needle is None or needle.encode() in cmdline
