"""Debian packages for the guest image: resolve candidates, download into a cache, unpack.

``apt-get download`` + ``dpkg -x`` only: nothing is installed on the build host and nothing runs in a
container. A package already in the cache at the candidate version is not fetched again, so a
rebuild with unchanged inputs needs no network.
"""
from __future__ import annotations

import glob
import os
import subprocess
from typing import Dict, List, Sequence, Tuple

from kuasar_vmm_task.image.kernel import ImageError

__all__ = ["candidates", "versioned_package", "fetch", "unpack"]


def _run(argv: List[str], cwd: str = ".") -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    except FileNotFoundError as err:
        raise ImageError(f"{argv[0]} is not installed (needed to build the guest image)") from err
    except subprocess.CalledProcessError as err:
        raise ImageError(f"{' '.join(argv)} failed: {err.stderr.strip()}") from err
    return done.stdout


def candidates(packages: Sequence[str]) -> List[Tuple[str, str]]:
    """(package, candidate version) for each of ``packages``, in order, from the local apt lists.

    One ``apt-cache`` run for all of them: each run loads the whole package cache (~0.5 s), and the
    cached-image check runs before every VM test module.

    :raise ImageError: apt has no candidate for one of them (named).
    """
    found: Dict[str, str] = {}
    name = ""
    for line in _run(["apt-cache", "show", "--no-all-versions", *packages]).splitlines():
        if line.startswith("Package:"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("Version:") and name and name not in found:
            found[name] = line.split(":", 1)[1].strip()
    missing = [p for p in packages if p not in found]
    if missing:
        raise ImageError(f"apt has no candidate for {', '.join(missing)}; run apt-get update")
    return [(p, found[p]) for p in packages]


def versioned_package(meta: str, prefix: str) -> str:
    """The versioned package a kernel metapackage depends on: ``linux-image-amd64`` ->
    ``linux-image-6.1.0-NN-amd64``, ``linux-source`` -> ``linux-source-6.1``.

    :raise ImageError: ``meta`` depends on no package named ``prefix``*.
    """
    for line in _run(["apt-cache", "depends", meta]).splitlines():
        line = line.strip()
        if line.startswith("Depends:") and line.split(":", 1)[1].strip().startswith(prefix):
            return line.split(":", 1)[1].strip()
    raise ImageError(f"{meta} depends on no {prefix}* package")


def _cached(cache: str, package: str, version: str) -> str:
    epochless = version.split(":", 1)[-1]
    for path in glob.glob(os.path.join(cache, f"{package}_*.deb")):
        base = os.path.basename(path)
        if base.startswith(f"{package}_") and epochless in base.replace("%3a", ":"):
            return path
    return ""


def fetch(packages: List[Tuple[str, str]], cache: str) -> Dict[str, str]:
    """Package -> .deb path in ``cache``, downloading what is missing.

    :raise ImageError: apt cannot download a package.
    """
    os.makedirs(cache, exist_ok=True)
    missing = [f"{p}={v}" for p, v in packages if not _cached(cache, p, v)]
    if missing:
        _run(["apt-get", "download", *missing], cwd=cache)
    found = {p: _cached(cache, p, v) for p, v in packages}
    lost = [p for p, path in found.items() if not path]
    if lost:
        raise ImageError(f"apt-get download left no .deb for {', '.join(lost)} in {cache}")
    return found


def unpack(deb: str, dest: str) -> None:
    """``dpkg -x``: the package's files below ``dest``, no maintainer scripts."""
    os.makedirs(dest, exist_ok=True)
    _run(["dpkg", "-x", deb, dest])
