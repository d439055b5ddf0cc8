"""The guest kernel of our own: Debian's ``linux-source`` built with every driver the guest needs built in.

Debian's generic kernel takes ~1.3-1.5 s of guest time to reach ``/init`` under TCG and then needs 26 modules
loaded (~0.3 s). ``make tinyconfig`` plus :data:`FRAGMENT` (virtio, 9p, virtiofs, vsock, overlay, bridge,
netfilter, the namespaces and cgroups runc uses, Debian's hardening) boots to the agent's Check in ~2.0 s
against ~3.4 s (tests/benchmark/README.md), as upstream Kuasar and Kata build their guest kernels.

A build takes ~5-6 minutes on 2 cores, so its result is kept in a cache keyed by the source package's
version and the fragment, shared by every image build on the machine (:func:`cache_dir`).
"""
from __future__ import annotations

import glob
import hashlib
import os
import subprocess
import tempfile
from typing import Dict, List

from kuasar_vmm_task.image import debs
from kuasar_vmm_task.image.kernel import ImageError

__all__ = ["SOURCE_META", "FRAGMENT", "ENV_KERNEL_CACHE", "cache_dir", "fragment_options", "config_mismatches",
           "build_key", "kernel"]

#: the metapackage that names the current kernel source package (linux-source-6.1 on Debian 12)
SOURCE_META = "linux-source"
#: the options applied on top of ``make tinyconfig``
FRAGMENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.config")
#: environment variable that moves the kernel cache
ENV_KERNEL_CACHE = "KUASAR_KERNEL_CACHE"
_SHARED_CACHE = "/var/cache/kuasar/guest-kernel"
_NAME = "vmlinux-"


def cache_dir(image_cache: str) -> str:
    """Where built kernels are kept: ``$KUASAR_KERNEL_CACHE``, else a machine-wide directory when it can be
    written (root), else below ``image_cache``."""
    chosen = os.environ.get(ENV_KERNEL_CACHE)
    if chosen:
        return chosen
    try:
        os.makedirs(_SHARED_CACHE, exist_ok=True)
    except OSError:
        return os.path.join(image_cache, "kernel")
    return _SHARED_CACHE if os.access(_SHARED_CACHE, os.W_OK) else os.path.join(image_cache, "kernel")


def fragment_options(text: str) -> Dict[str, str]:
    """``CONFIG_X`` -> value of a config fragment or ``.config`` (``# CONFIG_X is not set`` is ``n``)."""
    options: Dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value
        elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
            options[line[2:-len(" is not set")]] = "n"
    return options


def config_mismatches(wanted: Dict[str, str], config: str) -> List[str]:
    """The wanted options the final ``.config`` does not have (a symbol whose dependencies are off is
    dropped silently by Kconfig), as ``NAME=wanted (got actual)``."""
    actual = fragment_options(config)
    return [f"{name}={value} (got {actual.get(name, 'n')})" for name, value in sorted(wanted.items())
            if actual.get(name, "n") != value]


def _run(argv: List[str], cwd: str, log: str) -> None:
    with open(log, "ab") as out:
        try:
            subprocess.run(argv, cwd=cwd, check=True, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        except FileNotFoundError as err:
            raise ImageError(f"{argv[0]} is not installed (needed to build the guest kernel)") from err
        except subprocess.CalledProcessError as err:
            with open(log, "rb") as handle:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - 3000))
                tail = handle.read().decode(errors="replace")
            raise ImageError(f"building the guest kernel: {' '.join(argv)} failed (exit {err.returncode}); "
                             f"end of {log}:\n{tail}") from err


def _build(deb: str, work: str, log: str) -> bytes:
    """Unpack the source package ``deb`` below ``work`` and build its ``vmlinux`` with :data:`FRAGMENT`."""
    debs.unpack(deb, os.path.join(work, "pkg"))
    tarballs = glob.glob(os.path.join(work, "pkg", "usr", "src", "linux-source-*.tar.xz"))
    if not tarballs:
        raise ImageError(f"{os.path.basename(deb)} holds no usr/src/linux-source-*.tar.xz")
    _run(["tar", "-xf", tarballs[0], "-C", work], work, log)
    src = next(p for p in glob.glob(os.path.join(work, "linux-source-*")) if os.path.isdir(p))
    make = ["make", "ARCH=x86_64"]
    _run(make + ["tinyconfig"], src, log)
    _run(["sh", "scripts/kconfig/merge_config.sh", "-m", ".config", FRAGMENT], src, log)
    _run(make + ["olddefconfig"], src, log)
    with open(FRAGMENT) as handle:
        wanted = fragment_options(handle.read())
    with open(os.path.join(src, ".config")) as handle:
        missing = config_mismatches(wanted, handle.read())
    if missing:
        raise ImageError("the guest kernel's configuration lost options of %s: %s" % (FRAGMENT, ", ".join(missing)))
    _run(make + ["-j%d" % (os.cpu_count() or 1), "vmlinux"], src, log)
    with open(os.path.join(src, "vmlinux"), "rb") as handle:
        return handle.read()


def build_key(package: str, version: str) -> str:
    """What a built kernel depends on: the source package at ``version`` and :data:`FRAGMENT` (names its cache
    file; the image's digest includes it)."""
    with open(FRAGMENT, "rb") as handle:
        return hashlib.sha256(f"{package}={version}\n".encode() + handle.read()).hexdigest()[:16]


def kernel(package: str, version: str, deb_cache: str, cache: str) -> bytes:
    """The PVH-bootable ``vmlinux`` built from ``package`` (``linux-source-6.1``) at ``version``: from
    ``cache`` when it holds the build of this version and fragment, else built (minutes) and kept there.

    :raise ImageError: the package cannot be fetched, a build tool is missing, or the build failed (the
        message holds the end of the build log).
    """
    digest = build_key(package, version)
    path = os.path.join(cache, _NAME + digest)
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return handle.read()
    deb = debs.fetch([(package, version)], deb_cache)[package]
    os.makedirs(cache, exist_ok=True)
    log = os.path.join(cache, "build-%s.log" % digest)
    with open(log, "wb"):
        pass
    with tempfile.TemporaryDirectory(prefix="kuasar-kernel-", dir=cache) as work:
        vmlinux = _build(deb, work, log)
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(vmlinux)
    os.replace(tmp, path)
    # earlier versions or fragments are never used again, nor the logs of failed builds
    for old in glob.glob(os.path.join(cache, _NAME + "*")) + glob.glob(os.path.join(cache, "build-*.log")):
        if old not in (path, log):
            os.unlink(old)
    return vmlinux
