"""Preflight checks of a host for one sandbox type: what ``kuasar-ctl doctor`` reports.

Each sandboxer package offers its own checks as an entry point in the ``kuasar.doctor`` group (name =
sandbox type, value = a :data:`TypeChecks` callable); this module holds the value types and the checks every
type shares: the runtime binary and its version, cgroups, the sandboxer's socket and directory, the engine's
configuration naming that socket, and the ``containerd-shim-kuasar-<type>-v1`` entry point containerd
resolves after its own restart. Every finding says ok, warn or fail, and how to fix what is not ok.
"""
from __future__ import annotations

import enum
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

from kuasar_shared.daemon.args import default_dir, default_listen

__all__ = ["ENTRY_POINT_GROUP", "Finding", "Status", "TypeChecks", "Sandboxer", "binary_version",
           "cgroup_findings", "containerd_findings", "isulad_findings", "shim_findings", "socket_findings",
           "sandboxer_options"]

#: entry-point group through which each installed sandbox type offers its checks
ENTRY_POINT_GROUP = "kuasar.doctor"


class Status(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Finding:
    """One line of the report: what was checked (``subject``), what was found, and the fix when not ok."""

    status: Status
    subject: str
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Sandboxer:
    """Where one type's sandboxer serves, as its service options say (``/etc/sysconfig/kuasar-<type>``)."""

    type: str
    listen: str
    dir: str
    config: Optional[str]

    @property
    def socket_path(self) -> str:
        """``--listen`` without its optional ``unix://`` prefix: what engine configs name."""
        return self.listen[len("unix://"):] if self.listen.startswith("unix://") else self.listen


#: what a sandbox type's entry point provides: its own findings, given where its sandboxer runs
TypeChecks = Callable[[Sandboxer], list[Finding]]


def sandboxer_options(sandbox_type: str, sysconfig_dir: str = "/etc/sysconfig") -> Sandboxer:
    """The ``--listen``/``--dir``/``--config`` the service passes (``OPTIONS=`` of its sysconfig file), else
    the built-in defaults."""
    listen, directory, config = default_listen(sandbox_type), default_dir(sandbox_type), None
    try:
        with open(os.path.join(sysconfig_dir, "kuasar-" + sandbox_type), encoding="utf-8") as handle:
            lines = [ln for ln in handle if ln.strip().startswith("OPTIONS=")]
    except OSError:
        lines = []
    if lines:
        words = shlex.split(lines[-1].split("=", 1)[1])
        argv = shlex.split(words[0]) if len(words) == 1 else words
        for flag, value in zip(argv, argv[1:]):
            if flag in ("--listen", "-l"):
                listen = value
            elif flag in ("--dir", "-d"):
                directory = value
            elif flag in ("--config", "-c"):
                config = value
    return Sandboxer(sandbox_type, listen, directory, config)


def binary_version(subject: str, binary: str, args: Sequence[str] = ("--version",), fix: str = "") -> Finding:
    """The binary found on PATH (or at its path) and the first line of its version output."""
    path = binary if os.sep in binary else shutil.which(binary)
    if not path or not os.access(path, os.X_OK):
        return Finding(Status.FAIL, subject, "%s not found" % binary, fix or "install %s" % binary)
    try:
        out = subprocess.run([path, *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Finding(Status.FAIL, subject, "%s does not run: %s" % (path, err), fix or "reinstall %s" % binary)
    text = (out.stdout or out.stderr).strip().splitlines()
    version = text[0] if text else "(no version output)"
    if out.returncode != 0:
        return Finding(Status.FAIL, subject, "%s %s exited %d: %s" % (path, " ".join(args), out.returncode, version),
                       fix or "reinstall %s" % binary)
    return Finding(Status.OK, subject, "%s (%s)" % (version, path))


def _cgroup_mounts(mountinfo: str) -> list[tuple[str, str, str]]:
    """``(mount point, fs type, super options)`` of every cgroup mount."""
    found = []
    with open(mountinfo, encoding="utf-8") as handle:
        for line in handle:
            left, right = line.split(" - ", 1)
            fstype, _source, options = right.split()[:3]
            if fstype in ("cgroup", "cgroup2"):
                found.append((left.split()[4], fstype, options))
    return found


def cgroup_findings(mountinfo: str = "/proc/self/mountinfo",
                    required: Sequence[str] = ("cpu", "memory", "pids")) -> list[Finding]:
    """The cgroup layout (v1, v2 or hybrid) and whether the controllers pods are limited with are there."""
    mounts = _cgroup_mounts(mountinfo)
    v1 = [(point, opts) for point, fstype, opts in mounts if fstype == "cgroup"]
    v2 = [point for point, fstype, _ in mounts if fstype == "cgroup2"]
    controllers: dict[str, str] = {}
    for point, opts in v1:
        for option in opts.split(","):
            if option in required or option in ("cpuacct", "cpuset", "devices", "freezer", "hugetlb", "blkio"):
                controllers.setdefault(option, point)
    if v2:
        try:
            with open(os.path.join(v2[0], "cgroup.controllers"), encoding="ascii") as handle:
                for name in handle.read().split():
                    controllers.setdefault(name, v2[0])
        except OSError:
            pass
    if v1 and v2:
        layout = "hybrid (v1 controllers, v2 at %s)" % v2[0]
    elif v1:
        layout = "v1 (one hierarchy per controller under %s)" % os.path.dirname(v1[0][0])
    elif v2:
        layout = "v2 (unified at %s)" % v2[0]
    else:
        return [Finding(Status.FAIL, "cgroups", "no cgroup file system is mounted",
                        "mount cgroup2 on /sys/fs/cgroup (or let systemd do it)")]
    missing = [c for c in required if c not in controllers]
    findings = [Finding(Status.OK, "cgroups", layout)]
    if missing:
        findings.append(Finding(Status.FAIL, "cgroup controllers", "missing: %s" % ", ".join(missing),
                                "enable them (v2: +%s in the parent's cgroup.subtree_control)" % " +".join(missing)))
    else:
        findings.append(Finding(Status.OK, "cgroup controllers",
                                ", ".join("%s (%s)" % (c, controllers[c]) for c in required)))
    return findings


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
            return True
        except OSError:
            return False


def socket_findings(sandboxer: Sandboxer) -> list[Finding]:
    """Is the sandboxer serving on its socket, and does its state directory exist?"""
    unit = "kuasar-" + sandboxer.type
    path = sandboxer.socket_path
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        found = [Finding(Status.WARN, "socket", "%s does not exist: the sandboxer is not running" % path,
                         "systemctl start %s" % unit)]
    else:
        if not stat.S_ISSOCK(mode):
            found = [Finding(Status.FAIL, "socket", "%s is not a socket" % path, "remove it, then systemctl "
                             "restart %s" % unit)]
        elif _answers(path):
            found = [Finding(Status.OK, "socket", "%s accepts connections" % path)]
        else:
            found = [Finding(Status.FAIL, "socket", "%s exists but nobody answers (stale)" % path,
                             "systemctl restart %s" % unit)]
    if os.path.isdir(sandboxer.dir):
        found.append(Finding(Status.OK, "state dir", sandboxer.dir))
    else:
        found.append(Finding(Status.WARN, "state dir", "%s does not exist yet (made at first start)" % sandboxer.dir))
    return found


def _cri_runtimes(config: dict[str, Any]) -> dict[str, Any]:
    plugins = config.get("plugins", {})
    for key in ("io.containerd.cri.v1.runtime", "io.containerd.grpc.v1.cri"):
        runtimes = plugins.get(key, {}).get("containerd", {}).get("runtimes", {})
        if runtimes:
            return dict(runtimes)
    return {}


def containerd_findings(sandboxer: Sandboxer, path: str = "/etc/containerd/config.toml") -> list[Finding]:
    """containerd's config must name this socket as a ``type = "sandbox"`` proxy plugin and map a CRI runtime
    handler to it (``sandboxer = <plugin name>``)."""
    subject = "containerd config"
    socket_path = sandboxer.socket_path
    snippet = "see docs/containerd.md: [proxy_plugins.%s] type = \"sandbox\", address = \"%s\"" % (
        sandboxer.type, socket_path)
    try:
        with open(path, "rb") as handle:
            config = tomllib.load(handle)
    except FileNotFoundError:
        return [Finding(Status.WARN, subject, "%s does not exist (no containerd here, or iSulad)" % path, snippet)]
    except (OSError, tomllib.TOMLDecodeError) as err:
        return [Finding(Status.FAIL, subject, "%s: %s" % (path, err), "fix the file's TOML")]
    plugins = {name: p for name, p in config.get("proxy_plugins", {}).items() if p.get("type") == "sandbox"}
    ours = [name for name, p in plugins.items() if p.get("address") == socket_path]
    if not ours:
        elsewhere = [name for name, p in plugins.items() if name == sandboxer.type]
        if elsewhere:
            return [Finding(Status.FAIL, subject, "proxy plugin %r points at %s, the sandboxer listens on %s" % (
                elsewhere[0], plugins[elsewhere[0]].get("address"), socket_path), snippet)]
        return [Finding(Status.WARN, subject, "%s names no sandbox proxy plugin at %s" % (path, socket_path),
                        snippet)]
    handlers = sorted(name for name, rt in _cri_runtimes(config).items() if rt.get("sandboxer") in ours)
    if not handlers:
        return [Finding(Status.FAIL, subject, "proxy plugin %r is not the sandboxer of any CRI runtime handler"
                        % ours[0], "add a runtime with sandboxer = \"%s\" (docs/containerd.md)" % ours[0])]
    return [Finding(Status.OK, subject, "proxy plugin %r at %s, runtime handler%s %s" % (
        ours[0], socket_path, "" if len(handlers) == 1 else "s", ", ".join(handlers)))]


def isulad_findings(sandboxer: Sandboxer, path: str = "/etc/isulad/daemon.json") -> list[Finding]:
    """iSulad's ``cri-sandboxers`` must name this socket (only checked where iSulad is configured)."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        return [Finding(Status.FAIL, "iSulad config", "%s: %s" % (path, err), "fix the file's JSON")]
    socket_path = sandboxer.socket_path
    entries = [name for name, entry in (config.get("cri-sandboxers") or {}).items()
               if isinstance(entry, dict) and entry.get("address") == socket_path]
    if entries:
        return [Finding(Status.OK, "iSulad config", "cri-sandboxers %s at %s" % (entries[0], socket_path))]
    return [Finding(Status.WARN, "iSulad config", "%s names no cri-sandboxer at %s" % (path, socket_path),
                    "see docs/isulad.md")]


def shim_findings(sandbox_type: str) -> list[Finding]:
    """containerd re-attaches to running containers after its own restart only when it can resolve this
    binary from the runtime type (``io.containerd.kuasar-<type>.v1``) on its PATH."""
    name = "containerd-shim-kuasar-%s-v1" % sandbox_type
    path = shutil.which(name)
    if path:
        return [Finding(Status.OK, "shim entry point", path)]
    return [Finding(Status.WARN, "shim entry point", "%s is not on PATH: after containerd restarts it reports "
                    "this type's containers as exited" % name,
                    "install the kuasar-%s package (it ships /usr/bin/%s)" % (sandbox_type, name))]
