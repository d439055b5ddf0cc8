"""Pod and container cgroups over the cgroupfs files, for cgroup v1 and v2 (unified).

Sandboxers put a pod's processes into ``<parent>/<pod id>`` and report its statistics through
``Controller.Metrics`` / ``Task.Stats``. :meth:`Cgroup.open` detects the hierarchy layout under
``root`` (``/sys/fs/cgroup``; tests pass a fake tree): a ``cgroup.controllers`` file at the root
means v2, otherwise every mounted v1 hierarchy below the root is used (hybrid hosts included: the
``unified`` mount is ignored). Limits come from OCI ``linux.resources`` (memory, cpu, pids) as
decoded JSON; statistics are returned as :class:`~kuasar_shared.values.CgroupStats`.

A cgroup remembers how many path levels it created (:attr:`Cgroup.owned_depth`, persist it with
the pod) so :meth:`Cgroup.delete` also removes the parents it made once they are empty, and never
one it found.
"""
from __future__ import annotations

import abc
import errno
import logging
import os
from typing import Any, Iterator, Mapping, Optional

from kuasar_shared.errors import InvalidArgument, NotFound
from kuasar_shared.values import CgroupStats

__all__ = ["DEFAULT_ROOT", "cgroup_mode", "Cgroup", "CgroupV1", "CgroupV2"]

log = logging.getLogger(__name__)

DEFAULT_ROOT = "/sys/fs/cgroup"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_V2_CONTROLLERS = ("cpuset", "cpu", "memory", "pids")


def cgroup_mode(root: str = DEFAULT_ROOT) -> str:
    """``"v2"`` when ``root`` is a unified cgroup2 mount, else ``"v1"``."""
    return "v2" if os.path.exists(os.path.join(root, "cgroup.controllers")) else "v1"


def _clean_path(path: str) -> str:
    parts = [p for p in path.strip("/").split("/") if p]
    if not parts:
        raise InvalidArgument("invalid cgroup path %r: must name a cgroup below the root" % path)
    for part in parts:
        if part in (".", "..") or "\0" in part:
            raise InvalidArgument("invalid cgroup path %r: '.', '..' and NUL are not allowed" % path)
    return "/".join(parts)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _read_int(path: str, default: int = 0) -> int:
    try:
        value = _read(path)
    except FileNotFoundError:
        return default
    if value == "max":
        return default
    try:
        return int(value)
    except ValueError:
        return default


def _read_kv(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = _read(path)
    except FileNotFoundError:
        return out
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def _write(path: str, value: Any) -> None:
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except OSError as err:
        raise OSError(err.errno, "writing %r to %s: %s" % (str(value), path, err.strerror)) from err


class Cgroup(abc.ABC):
    """One cgroup path (e.g. ``kubepods/pod1/<pod id>``) in every hierarchy of a root.

    :ivar path: the path below the root, without leading ``/``.
    :ivar owned_depth: how many trailing path levels :meth:`create` made (0: none).
    """

    version = ""

    def __init__(self, path: str, root: str = DEFAULT_ROOT, owned_depth: int = 0) -> None:
        self.path = _clean_path(path)
        self.root = root
        self.owned_depth = owned_depth

    @staticmethod
    def open(path: str, root: str = DEFAULT_ROOT, owned_depth: int = 0) -> "Cgroup":
        """A :class:`CgroupV2` or :class:`CgroupV1` for ``path``, by the layout of ``root``.

        :raise InvalidArgument: for a path with ``..``, ``.`` or NUL components, or the root itself.
        """
        cls = CgroupV2 if cgroup_mode(root) == "v2" else CgroupV1
        return cls(path, root, owned_depth)

    def __repr__(self) -> str:
        return "<%s %s owned_depth=%d>" % (type(self).__name__, self.path, self.owned_depth)

    # --- layout, provided by subclasses ---------------------------------------------------
    @abc.abstractmethod
    def _hierarchies(self) -> list[str]:
        """Absolute root directories of the hierarchies this cgroup lives in."""

    @abc.abstractmethod
    def _prepare_level(self, hierarchy: str, directory: str) -> None:
        """Called after ``directory`` was created (v1 cpuset init, v2 controller enabling)."""

    @abc.abstractmethod
    def _stats_from(self, dirs: Mapping[str, str]) -> CgroupStats:
        """Counters read from the cgroup's existing directories (hierarchy root -> directory)."""

    @abc.abstractmethod
    def _apply(self, dirs: Mapping[str, str], resources: Mapping[str, Any]) -> None:
        """Write OCI ``linux.resources`` into the cgroup's files."""

    # --- common operations -----------------------------------------------------------------
    def dirs(self) -> dict[str, str]:
        """Map of hierarchy root -> this cgroup's directory in it."""
        return {h: os.path.join(h, self.path) for h in self._hierarchies()}

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self.dirs().values())

    def create(self) -> None:
        """Create the cgroup (and missing parents) in every hierarchy; idempotent.

        :raise OSError: when a directory cannot be made (message names it).
        """
        parts = self.path.split("/")
        depth = 0
        for hierarchy in self._hierarchies():
            for level in range(1, len(parts) + 1):
                directory = os.path.join(hierarchy, *parts[:level])
                try:
                    os.mkdir(directory, 0o755)
                except FileExistsError:
                    continue
                depth = max(depth, len(parts) - level + 1)
                self._prepare_level(hierarchy, directory)
        self.owned_depth = max(self.owned_depth, depth)

    def add_pid(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup in every hierarchy.

        :raise NotFound: when the cgroup does not exist.
        """
        for d in self.dirs().values():
            if not os.path.isdir(d):
                raise NotFound("cgroup %s does not exist" % d)
            _write(os.path.join(d, "cgroup.procs"), pid)

    def pids(self) -> list[int]:
        """Pids in the cgroup and its descendants (first hierarchy that has it)."""
        for d in self.dirs().values():
            if os.path.isdir(d):
                found: set[int] = set()
                for sub in _walk_bottom_up(d):
                    found.update(_procs(sub))
                return sorted(found)
        return []

    def set_resources(self, resources: Mapping[str, Any]) -> None:
        """Apply OCI ``linux.resources`` (memory, cpu, pids; other keys ignored).

        :raise NotFound: when the cgroup does not exist. :raise OSError: when the kernel refuses.
        """
        dirs = self.dirs()
        if not any(os.path.isdir(d) for d in dirs.values()):
            raise NotFound("cgroup %s does not exist" % self.path)
        self._apply(dirs, resources)

    def stats(self) -> CgroupStats:
        """Current counters. :raise NotFound: when the cgroup does not exist."""
        dirs = {h: d for h, d in self.dirs().items() if os.path.isdir(d)}
        if not dirs:
            raise NotFound("cgroup %s does not exist" % self.path)
        return self._stats_from(dirs)

    def delete(self) -> None:
        """Remove the cgroup with its descendants, then the parents it created while empty.

        Processes still inside are moved to the nearest parent that stays. Missing directories
        are fine (idempotent). :raise OSError: when a cgroup stays busy.
        """
        parts = self.path.split("/")
        keep_levels = max(len(parts) - self.owned_depth, 0)
        for hierarchy, directory in self.dirs().items():
            if not os.path.isdir(directory):
                continue
            target = os.path.join(hierarchy, *parts[:min(keep_levels, len(parts) - 1)])
            for sub in _walk_bottom_up(directory):
                for pid in _procs(sub):
                    try:
                        _write(os.path.join(target, "cgroup.procs"), pid)
                    except OSError as err:
                        if err.errno != errno.ESRCH:
                            raise
                _rmdir(sub)
            for level in range(len(parts) - 1, keep_levels, -1):
                if not _remove_if_unused(os.path.join(hierarchy, *parts[:level])):
                    break


def _procs(directory: str) -> list[int]:
    try:
        text = _read(os.path.join(directory, "cgroup.procs"))
    except FileNotFoundError:
        return []
    return [int(x) for x in text.split()]


def _walk_bottom_up(directory: str) -> Iterator[str]:
    for dirpath, _dirnames, _files in os.walk(directory, topdown=False):
        yield dirpath


def _remove_if_unused(directory: str) -> bool:
    """Remove a cgroup that has no child cgroups and no processes; False when it stays."""
    if not os.path.isdir(directory):
        return True
    if any(e.is_dir(follow_symlinks=False) for e in os.scandir(directory)) or _procs(directory):
        return False
    try:
        _rmdir(directory)
    except OSError as err:
        if err.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def _rmdir(directory: str) -> None:
    """rmdir a cgroup; on a fake (regular) tree the control files are removed first."""
    try:
        os.rmdir(directory)
        return
    except FileNotFoundError:
        return
    except OSError as err:
        if err.errno != errno.ENOTEMPTY:
            raise OSError(err.errno, "removing cgroup %s: %s" % (directory, err.strerror)) from err
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            os.unlink(path)
    os.rmdir(directory)


class CgroupV1(Cgroup):
    """cgroup v1: the same path in every mounted hierarchy (cpu, memory, pids, cpuset, ...)."""

    version = "v1"

    def _hierarchies(self) -> list[str]:
        out = []
        try:
            entries = sorted(os.scandir(self.root), key=lambda e: e.name)
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.name == "unified" or not entry.is_dir(follow_symlinks=False):
                continue
            if os.path.exists(os.path.join(entry.path, "cgroup.procs")):
                out.append(entry.path)
        return out

    def _hierarchy(self, dirs: Mapping[str, str], controller: str) -> Optional[str]:
        for hierarchy, d in dirs.items():
            if controller in os.path.basename(hierarchy).split(",") and os.path.isdir(d):
                return d
        return None

    def _prepare_level(self, hierarchy: str, directory: str) -> None:
        if "cpuset" not in os.path.basename(hierarchy).split(","):
            return
        parent = os.path.dirname(directory)
        for name in ("cpuset.cpus", "cpuset.mems"):
            mine = os.path.join(directory, name)
            if os.path.exists(mine) and not _read(mine):
                _write(mine, _read(os.path.join(parent, name)))

    def _apply(self, dirs: Mapping[str, str], resources: Mapping[str, Any]) -> None:
        memory = resources.get("memory") or {}
        mem = self._hierarchy(dirs, "memory")
        if memory and mem:
            limit, swap = memory.get("limit"), memory.get("swap")
            memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
            if limit is not None:
                try:
                    _write(os.path.join(mem, "memory.limit_in_bytes"), limit)
                except OSError as err:  # the new limit exceeds the current memsw limit: raise that first
                    if err.errno != errno.EINVAL or swap is None:
                        raise
                    _write(memsw, swap)
            if swap is not None and os.path.exists(memsw):
                _write(memsw, swap)
            if memory.get("reservation") is not None:
                _write(os.path.join(mem, "memory.soft_limit_in_bytes"), memory["reservation"])
            if memory.get("swappiness") is not None:
                _write(os.path.join(mem, "memory.swappiness"), memory["swappiness"])
            if memory.get("disableOOMKiller"):
                _write(os.path.join(mem, "memory.oom_control"), 1)
        cpu = resources.get("cpu") or {}
        cpu_dir = self._hierarchy(dirs, "cpu")
        if cpu and cpu_dir:
            for key, name in (("shares", "cpu.shares"), ("period", "cpu.cfs_period_us"),
                              ("quota", "cpu.cfs_quota_us"), ("realtimePeriod", "cpu.rt_period_us"),
                              ("realtimeRuntime", "cpu.rt_runtime_us")):
                if cpu.get(key) is not None and cpu.get(key) != 0:
                    _write(os.path.join(cpu_dir, name), cpu[key])
        cpuset = self._hierarchy(dirs, "cpuset")
        if cpu and cpuset:
            for key in ("cpus", "mems"):
                if cpu.get(key):
                    _write(os.path.join(cpuset, "cpuset." + key), cpu[key])
        pids = resources.get("pids") or {}
        pids_dir = self._hierarchy(dirs, "pids")
        if pids.get("limit") is not None and pids_dir:
            limit = pids["limit"]
            _write(os.path.join(pids_dir, "pids.max"), limit if limit > 0 else "max")

    def _stats_from(self, dirs: Mapping[str, str]) -> CgroupStats:
        acct = self._hierarchy(dirs, "cpuacct")
        mem = self._hierarchy(dirs, "memory")
        pids = self._hierarchy(dirs, "pids")
        ticks = _read_kv(os.path.join(acct, "cpuacct.stat")) if acct else {}
        tick_ns = 1_000_000_000 // _CLK_TCK
        mstat = _read_kv(os.path.join(mem, "memory.stat")) if mem else {}
        return CgroupStats(
            cpu_total_ns=_read_int(os.path.join(acct, "cpuacct.usage")) if acct else 0,
            cpu_user_ns=ticks.get("user", 0) * tick_ns,
            cpu_kernel_ns=ticks.get("system", 0) * tick_ns,
            memory_usage=_read_int(os.path.join(mem, "memory.usage_in_bytes")) if mem else 0,
            memory_limit=_read_int(os.path.join(mem, "memory.limit_in_bytes")) if mem else 0,
            memory_max_usage=_read_int(os.path.join(mem, "memory.max_usage_in_bytes")) if mem else 0,
            memory_failcnt=_read_int(os.path.join(mem, "memory.failcnt")) if mem else 0,
            memory_rss=mstat.get("total_rss", mstat.get("rss", 0)),
            memory_cache=mstat.get("total_cache", mstat.get("cache", 0)),
            memory_total_inactive_file=mstat.get("total_inactive_file", 0),
            pids_current=_read_int(os.path.join(pids, "pids.current")) if pids else 0,
            pids_limit=_read_int(os.path.join(pids, "pids.max")) if pids else 0,
            memory_oom_kill=_read_kv(os.path.join(mem, "memory.oom_control")).get("oom_kill", 0) if mem else 0,
        )


class CgroupV2(Cgroup):
    """cgroup v2: one unified tree; controllers are enabled down the path on creation."""

    version = "v2"

    def _hierarchies(self) -> list[str]:
        return [self.root]

    def _prepare_level(self, hierarchy: str, directory: str) -> None:
        parent = os.path.dirname(directory)
        available = _read(os.path.join(parent, "cgroup.controllers")).split() \
            if os.path.exists(os.path.join(parent, "cgroup.controllers")) else []
        wanted = [c for c in _V2_CONTROLLERS if c in available]
        if wanted:
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))

    def _apply(self, dirs: Mapping[str, str], resources: Mapping[str, Any]) -> None:
        d = dirs[self.root]
        memory = resources.get("memory") or {}
        limit = memory.get("limit")
        if limit is not None:
            _write(os.path.join(d, "memory.max"), limit if limit > 0 else "max")
        if memory.get("reservation") is not None:
            _write(os.path.join(d, "memory.low"), memory["reservation"])
        swap = memory.get("swap")
        if swap is not None and os.path.exists(os.path.join(d, "memory.swap.max")):
            # OCI swap is memory+swap; v2 limits swap alone
            value = "max" if swap < 0 else max(swap - (limit or 0), 0)
            _write(os.path.join(d, "memory.swap.max"), value)
        cpu = resources.get("cpu") or {}
        if cpu.get("shares"):
            weight = 1 + ((int(cpu["shares"]) - 2) * 9999) // 262142
            _write(os.path.join(d, "cpu.weight"), min(max(weight, 1), 10000))
        if cpu.get("quota") is not None or cpu.get("period"):
            quota = cpu.get("quota")
            period = cpu.get("period") or 100000
            _write(os.path.join(d, "cpu.max"), "%s %d" % (quota if quota and quota > 0 else "max", period))
        for key in ("cpus", "mems"):
            if cpu.get(key):
                _write(os.path.join(d, "cpuset." + key), cpu[key])
        pids = resources.get("pids") or {}
        if pids.get("limit") is not None:
            _write(os.path.join(d, "pids.max"), pids["limit"] if pids["limit"] > 0 else "max")

    def _stats_from(self, dirs: Mapping[str, str]) -> CgroupStats:
        d = dirs[self.root]
        cpu = _read_kv(os.path.join(d, "cpu.stat"))
        mstat = _read_kv(os.path.join(d, "memory.stat"))
        events = _read_kv(os.path.join(d, "memory.events"))
        return CgroupStats(
            cpu_total_ns=cpu.get("usage_usec", 0) * 1000,
            cpu_user_ns=cpu.get("user_usec", 0) * 1000,
            cpu_kernel_ns=cpu.get("system_usec", 0) * 1000,
            memory_usage=_read_int(os.path.join(d, "memory.current")),
            memory_limit=_read_int(os.path.join(d, "memory.max")),
            memory_max_usage=_read_int(os.path.join(d, "memory.peak")),
            memory_failcnt=events.get("max", 0),
            memory_rss=mstat.get("anon", 0),
            memory_cache=mstat.get("file", 0),
            memory_total_inactive_file=mstat.get("inactive_file", 0),
            pids_current=_read_int(os.path.join(d, "pids.current")),
            pids_limit=_read_int(os.path.join(d, "pids.max")),
            memory_oom_kill=events.get("oom_kill", 0),
        )
