"""Helpers of the packaging tests: building with rpm/build.sh and throwaway ``rpm --root`` trees.

A throwaway root holds no distribution, so a small ``kuasar-test-base`` package stands in for it:
it provides the capabilities our packages may require from the distribution (python3-h2,
runc, ...), ships busybox as ``/bin/sh`` for the scriptlets and a fake ``systemctl`` that logs its
arguments to ``/var/log/systemctl.log``. Dependencies are then checked for real: a package that
needed another kuasar subpackage it does not declare, or one it should not need, shows up.
"""
from __future__ import annotations

import os
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List


REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "rpm" / "build.sh"
TYPES = ("wasm", "quark", "vmm")
#: kept between runs: the guest image command rebuilds only when its inputs change
GUEST_DIR = Path("/var/tmp/kuasar-rpm-guest")
#: what a distribution provides, as far as our packages may ask for it
BASE_PROVIDES = (
    "python3 = 3.11.2", "python3-grpcio = 1.51.1", "python3-h2 = 4.1.0", "python3-protobuf = 3.21.12",
    "python3-pyyaml = 6.0",
    "python3-pyroute2 = 0.7.2", "python3-daemon = 2.3.2", "python3-wasmtime = 50.0.1",
    "python3-qemu-qmp = 0.0.3", "runc = 1.1.5", "runsc = 20221219", "qemu = 7.2", "/usr/bin/python3",
)
FAKE_SYSTEMCTL = '#!/bin/sh\necho "$*" >> /var/log/systemctl.log\n'


def c_library_provides() -> List[str]:
    """What the distribution's C library provides, for kuasar-wasm's native runner and kuasar-runc's
    sandbox-parent helper (rpmbuild derives their ``libc.so.6(GLIBC_x)(64bit)`` requirements from the ELF
    files): rpm's own elfdeps over the C library and dynamic loader this interpreter runs with, plus the
    loader's hash style."""
    with open("/proc/self/maps") as maps:
        libraries = sorted({line.split()[-1] for line in maps
                            if "/libc.so" in line or "/ld-linux" in line or "/ld64.so" in line})
    found = run("/usr/lib/rpm/elfdeps", "--provides", *libraries).stdout.split()
    return sorted(set(found)) + ["rtld(GNU_HASH)"]


def run(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    """Run a command, text output captured; a failure shows its output."""
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise AssertionError("%s failed (rc=%d):\n%s\n%s" % (" ".join(argv), proc.returncode, proc.stdout,
                                                              proc.stderr))
    return proc


def expected_subpackages(src: Path = REPO) -> List[str]:
    """The subpackages rpm/build.sh must produce for the tree at ``src``."""
    names = ["kuasar", "kuasar-common", "kuasar-ctl", "kuasar-runc"]
    names += ["kuasar-" + t for t in TYPES if (src / ("%s-sandboxer" % t) / "pyproject.toml").is_file()]
    if (src / "vmm-task" / "pyproject.toml").is_file():
        names.append("kuasar-vmm-guest")
    return sorted(names)


@dataclass
class Built:
    """RPMs of one build: binary package name -> path."""

    outdir: Path
    packages: Dict[str, Path] = field(default_factory=dict)

    @classmethod
    def collect(cls, outdir: Path) -> "Built":
        built = cls(outdir)
        for path in sorted(p for p in outdir.glob("*.rpm") if not p.name.endswith(".src.rpm")):
            name = run("rpm", "-qp", "--qf", "%{NAME}", str(path)).stdout
            built.packages[name] = path
        return built

    def paths(self, *names: str) -> List[str]:
        return [str(self.packages[n]) for n in names]


def build(tmp: Path, *args: str, src: Path = REPO) -> Built:
    outdir = tmp / "out"
    guest = ["--guest-dir", str(GUEST_DIR)] if (src / "vmm-task" / "pyproject.toml").is_file() else []
    run(str(BUILD), "--src", str(src), "--topdir", str(tmp / "top"), "--outdir", str(outdir), *guest, *args)
    return Built.collect(outdir)


class Root:
    """A throwaway rpm root with the base package installed."""

    def __init__(self, path: Path, base: Path) -> None:
        self.path = path
        (path / "dev").mkdir(parents=True)
        os.mknod(path / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        run("rpm", "--root", str(path), "--initdb")
        self.install(str(base))

    def rpm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run("rpm", "--root", str(self.path), *args, check=check)

    def install(self, *paths: str, upgrade: bool = False, check: bool = True) -> subprocess.CompletedProcess:
        return self.rpm("-U" if upgrade else "-i", *paths, check=check)

    def installed(self) -> List[str]:
        return sorted(self.rpm("-qa", "--qf", "%{NAME}\n").stdout.split())

    def systemd_booted(self) -> None:
        """Make the scriptlets believe systemd runs (they act only then)."""
        (self.path / "run" / "systemd" / "system").mkdir(parents=True, exist_ok=True)

    def systemctl_log(self) -> List[str]:
        log = self.path / "var" / "log" / "systemctl.log"
        return log.read_text().splitlines() if log.exists() else []

    def site_packages(self) -> Path:
        found = sorted((self.path / "usr" / "lib").glob("python3*/*-packages"))
        assert found, "no site-packages in %s" % self.path
        return found[0]


def system_python_env(root: Root) -> Dict[str, str]:
    """Environment that runs the root's entry points with Debian's /usr/bin/python3: the root's
    site-packages first, then Debian's python3-* packages; only what Debian does not package
    (wasmtime, qemu.qmp) comes from the repository's venv, through a directory of links."""
    extra = root.path.parent / "not-in-debian"
    if not extra.exists():
        extra.mkdir()
        venv_site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        for name in ("wasmtime", "qemu"):
            if (venv_site / name).exists():
                os.symlink(venv_site / name, extra / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = "%s:%s" % (root.site_packages(), extra)
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env
