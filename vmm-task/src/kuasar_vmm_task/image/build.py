"""Build the guest image: ``vmlinux.bin`` (PVH-bootable kernel) and ``kuasar.initrd``.

The kernel is our own by default, built from Debian's kernel source with every guest driver built in
(:mod:`~kuasar_vmm_task.image.kbuild`); ``--kernel debian`` takes Debian's generic kernel instead, and its
driver modules go into the image in load order (which vmm-task loads). The initrd holds a stage-1 ``/init``
(busybox) and, below ``/rootfs``, the root filesystem: busybox, python3.11 (pruned stdlib, precompiled),
python3-protobuf, runc, the shared libraries they need, kuasar_shared and kuasar_vmm_task, with vmm-task as
``/sbin/init``. Everything comes from Debian packages unpacked with ``dpkg -x``.

The initrd is an uncompressed cpio: under TCG the guest kernel's gunzip of 16 MB cost ~1.2 s of
guest time and ~3 s of boot-to-agent (lz4 sat in between); 43 MB on the host disk is the cheaper price.

The result is cached: ``<outdir>/kuasar-image.stamp`` records a digest of every input (package
versions, these sources, the agent's sources); a build with the same digest and both outputs present
does nothing. Outputs are replaced atomically. An image this builder did not make (no stamp: one
installed by a package, say) is never overwritten unless ``--force`` says so.

One default location, :data:`DEFAULT_OUTDIR`, where vmm-sandboxer's built-in config and the shipped
``config_qemu.toml`` look for the image: the demo, the tests and a hand-started sandboxer all meet there
(``$KUASAR_GUEST_IMAGE_DIR`` moves it, see :func:`default_outdir`).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Tuple

from kuasar_vmm_task import kmod
from kuasar_vmm_task.image import cpio, debs, elf, kbuild, kernel
from kuasar_vmm_task.image.kernel import ImageError

__all__ = ["DEFAULT_OUTDIR", "ENV_IMAGE_DIR", "KERNEL_OWN", "KERNEL_DEBIAN", "KERNELS", "PACKAGES", "build",
           "default_outdir", "main"]

#: where vmm-sandboxer's defaults expect ``vmlinux.bin`` and ``kuasar.initrd``
DEFAULT_OUTDIR = "/var/lib/kuasar"
#: environment variable that moves the image elsewhere (tests, benchmarks, demo)
ENV_IMAGE_DIR = "KUASAR_GUEST_IMAGE_DIR"

#: the guest kernels an image can have (see :func:`build`)
KERNEL_OWN, KERNEL_DEBIAN = "own", "debian"
KERNELS = (KERNEL_OWN, KERNEL_DEBIAN)
#: userland packages (the kernel package is resolved from linux-source or linux-image-amd64)
PACKAGES = ("busybox-static", "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib",
            "python3-protobuf", "libprotobuf32", "libstdc++6", "libgcc-s1", "runc", "libc6", "zlib1g", "libexpat1",
            "libffi8", "libseccomp2")

#: stdlib parts a headless agent never imports
_PRUNE = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data", "distutils",
          "venv", "unittest", "sqlite3", "dbm", "curses", "xmlrpc", "wsgiref", "__phello__", "turtle.py",
          "pydoc.py", "doctest.py", "config-3.11-x86_64-linux-gnu")
#: kuasar_shared parts that need grpc/yaml or exist for the host only
_SHARED_SKIP = ("ctl", "sandbox", "testing")
_LIBDIR = "lib/x86_64-linux-gnu"
_STAMP = "kuasar-image.stamp"
KERNEL_NAME = "vmlinux.bin"
INITRD_NAME = "kuasar.initrd"

#: ``-IS``: no site module (its start-up cost is paid in emulated instructions); the one path it added
_LAUNCHER = """#!/usr/bin/python3 -IS
import sys
sys.path.append("/usr/lib/python3/dist-packages")
from kuasar_vmm_task.main import main
raise SystemExit(main())
"""
_ETC = {
    "passwd": "root:x:0:0:root:/root:/bin/sh\n",
    "group": "root:x:0:\n",
    "hosts": "127.0.0.1 localhost\n::1 localhost\n",
    "hostname": "kuasar\n",
    "resolv.conf": "",
}


def _source_dir(module: str) -> str:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ImageError(f"cannot find the {module} sources (run with PYTHONPATH covering them)")
    return list(spec.submodule_search_locations)[0]


def _digest(packages: List[Tuple[str, str]], sources: List[str]) -> str:
    """Over package versions and the source files that go into the image (host-only parts skipped)."""
    h = hashlib.sha256(json.dumps(sorted(packages)).encode())
    for root in sources:
        for dirpath, dirnames, files in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in _SHARED_SKIP or dirpath != root)
            for fname in sorted(files):
                if fname.endswith((".py", ".sh")) and not fname.endswith("_grpc.py"):
                    path = os.path.join(dirpath, fname)
                    h.update(os.path.relpath(path, root).encode())
                    with open(path, "rb") as handle:
                        h.update(hashlib.sha256(handle.read()).digest())
    return h.hexdigest()


def _copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):
        if os.path.lexists(dst):
            os.unlink(dst)
        os.symlink(os.readlink(src), dst)
    elif os.path.isdir(src):
        shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dst)


def _lib_closure(rootfs: str, stage: str) -> None:
    """Copy every library an ELF file in ``rootfs`` needs from ``stage``; drop Python extension
    modules whose libraries are not part of the image (their import fails cleanly)."""
    search = [os.path.join(stage, _LIBDIR), os.path.join(stage, "usr", _LIBDIR)]
    present: Dict[str, str] = {}
    queue = []
    for dirpath, _dirs, files in os.walk(rootfs):
        for fname in files:
            path = os.path.join(dirpath, fname)
            if not os.path.islink(path) and elf.is_elf(path):
                queue.append(path)
    dynload = os.path.join(rootfs, "usr/lib/python3.11/lib-dynload")
    while queue:
        path = queue.pop()
        missing = []
        for name in elf.needed(path):
            if name in present:
                continue
            found = next((os.path.join(d, name) for d in search if os.path.exists(os.path.join(d, name))), "")
            if not found:
                missing.append(name)
                continue
            target = os.path.join(rootfs, _LIBDIR, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(found), target)
            present[name] = target
            queue.append(target)
        if missing:
            if path.startswith(dynload + os.sep) or os.path.basename(path).startswith("_message"):
                os.unlink(path)
            else:
                raise ImageError(f"{os.path.relpath(path, rootfs)} needs {', '.join(missing)}, "
                                 f"which no image package provides")


def _write_file(path: str, text: str, mode: int = 0o644) -> None:
    """Create ``path`` afresh. The staging tree holds absolute symlinks (``/bin/busybox``): writing
    through one would overwrite the build host's file, so an existing entry is removed first and the
    open refuses to follow links."""
    if os.path.lexists(path):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    os.fchmod(fd, mode)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _busybox_links(rootfs: str) -> None:
    busybox = os.path.join(rootfs, "bin/busybox")
    listing = subprocess.run([busybox, "--list-full"], check=True, stdout=subprocess.PIPE, text=True).stdout
    for applet in listing.split():
        if os.path.basename(applet) == "busybox":
            continue  # a link named busybox would replace the binary itself
        link = os.path.join(rootfs, applet)
        if not os.path.lexists(link):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            os.symlink("/bin/busybox", link)


def _python(rootfs: str, stage: str) -> None:
    _copy(os.path.join(stage, "usr/bin/python3.11"), os.path.join(rootfs, "usr/bin/python3.11"))
    os.symlink("python3.11", os.path.join(rootfs, "usr/bin/python3"))
    _copy(os.path.join(stage, "usr/lib/python3.11"), os.path.join(rootfs, "usr/lib/python3.11"))
    for name in _PRUNE:
        path = os.path.join(rootfs, "usr/lib/python3.11", name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.unlink(path)
    site = os.path.join(rootfs, "usr/lib/python3/dist-packages")
    _copy(os.path.join(stage, "usr/lib/python3/dist-packages/google"), os.path.join(site, "google"))
    for pkg, skip in (("kuasar_shared", _SHARED_SKIP), ("kuasar_vmm_task", ("image",))):
        top = _source_dir(pkg)
        shutil.copytree(top, os.path.join(site, pkg), symlinks=True, ignore=_ignore(top, skip))


def _ignore(top: str, skip_at_top: Tuple[str, ...]):  # type: ignore[no-untyped-def]
    """copytree filter: host-only subpackages at the top, caches, stubs and grpc modules anywhere."""
    def ignore(directory: str, names: List[str]) -> List[str]:
        return [n for n in names if (directory == top and n in skip_at_top) or n == "__pycache__"
                or n.endswith(("_grpc.py", ".pyi"))]
    return ignore


def _compile(rootfs: str) -> None:
    """Precompile with the image's own interpreter (run through the image's loader), so that the
    guest never compiles at boot, whatever Python the build host has. The stdlib and protobuf become
    sourceless (``module.pyc`` in place of ``module.py``): half the bytes to unpack and copy at boot;
    kuasar's own modules keep their sources for readable tracebacks."""
    loader = os.path.join(rootfs, "lib64/ld-linux-x86-64.so.2")
    python = [loader, "--library-path", os.path.join(rootfs, _LIBDIR), os.path.join(rootfs, "usr/bin/python3.11"),
              "-E", "-m", "compileall", "-q", "-j0", "--invalidation-mode", "unchecked-hash", "-s", rootfs, "-p", "/"]
    env = {"PYTHONHOME": os.path.join(rootfs, "usr"), "PATH": "/usr/bin:/bin"}
    sourceless = [os.path.join(rootfs, "usr/lib/python3.11"),
                  os.path.join(rootfs, "usr/lib/python3/dist-packages/google")]
    subprocess.run(python + ["-b"] + sourceless, check=True, env=env)
    for top in sourceless:
        for dirpath, dirnames, files in os.walk(top):
            for fname in files:
                if fname.endswith(".py") and fname + "c" in files:
                    os.unlink(os.path.join(dirpath, fname))
            if "__pycache__" in dirnames:
                shutil.rmtree(os.path.join(dirpath, "__pycache__"))
                dirnames.remove("__pycache__")
    subprocess.run(python + [os.path.join(rootfs, "usr/lib/python3/dist-packages")], check=True, env=env)


def _rootfs(rootfs: str, stage: str) -> None:
    for d in ("proc", "sys", "dev", "run", "tmp", "mnt", "root", "var/tmp", "etc", "sbin", "usr/sbin"):
        os.makedirs(os.path.join(rootfs, d), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    _copy(os.path.join(stage, "bin/busybox"), os.path.join(rootfs, "bin/busybox"))
    _copy(os.path.join(stage, "usr/sbin/runc"), os.path.join(rootfs, "usr/sbin/runc"))
    _python(rootfs, stage)
    for name, text in _ETC.items():
        _write_file(os.path.join(rootfs, "etc", name), text)
    _write_file(os.path.join(rootfs, "sbin/init"), _LAUNCHER, 0o755)
    _busybox_links(rootfs)  # after our own files: links never replace an existing entry
    _lib_closure(rootfs, stage)
    ld = os.path.join(rootfs, "lib64/ld-linux-x86-64.so.2")
    os.makedirs(os.path.dirname(ld), exist_ok=True)
    os.symlink("/" + _LIBDIR + "/ld-linux-x86-64.so.2", ld)
    _compile(rootfs)


def _modules(rootfs: str, kroot: str) -> None:
    """The guest's kernel modules and their load order, for vmm-task to load (:mod:`kuasar_vmm_task.kmod`)."""
    version = os.listdir(os.path.join(kroot, "lib/modules"))[0]
    vdir = os.path.join(kroot, "lib/modules", version)
    order = kernel.load_order(kernel.GUEST_MODULES, kernel.module_index(os.path.join(vdir, "kernel")),
                              kernel.builtin_modules(vdir))
    target = os.path.join(rootfs, kmod.MODULES_DIR.lstrip("/"))
    os.makedirs(target)
    names = []
    for path in order:
        names.append(os.path.basename(path))
        shutil.copy2(path, os.path.join(target, names[-1]))
    with open(os.path.join(target, kmod.ORDER_FILE), "w") as handle:
        handle.write("".join(n + "\n" for n in names))


#: stage 1's mounts, in order (init.sh runs ``mount -a`` over them)
_STAGE1_FSTAB = """proc /proc proc defaults 0 0
sysfs /sys sysfs defaults 0 0
devtmpfs /dev devtmpfs defaults 0 0
/rootfs /rootfs none bind 0 0
/dev /rootfs/dev none move 0 0
/proc /rootfs/proc none move 0 0
/sys /rootfs/sys none move 0 0
"""


def _stage1(stage1: str, script: str) -> None:
    for d in ("proc", "sys", "dev"):
        os.makedirs(os.path.join(stage1, d))
    _write_file(os.path.join(stage1, "fstab"), _STAGE1_FSTAB)
    shutil.copy2(script, os.path.join(stage1, "init"))
    os.chmod(os.path.join(stage1, "init"), 0o755)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def default_outdir() -> str:
    """``$KUASAR_GUEST_IMAGE_DIR``, else :data:`DEFAULT_OUTDIR`."""
    return os.environ.get(ENV_IMAGE_DIR) or DEFAULT_OUTDIR


def build(outdir: str, cache: str, force: bool = False, kernel_kind: str = KERNEL_OWN) -> Dict[str, object]:
    """Build into ``outdir`` unless the stamp says the outputs are current; return the stamp record.

    ``kernel_kind``: :data:`KERNEL_OWN` (built from Debian's kernel source, every guest driver built in:
    :mod:`~kuasar_vmm_task.image.kbuild`) or :data:`KERNEL_DEBIAN` (Debian's generic kernel, whose driver
    modules go into the image for vmm-task to load).

    :raise ImageError: a package, module or library is missing, a tool failed, or ``outdir`` holds an
        image without our stamp (and ``force`` is not set).
    """
    if kernel_kind not in KERNELS:
        raise ImageError(f"unknown kernel {kernel_kind!r}: expected one of {', '.join(KERNELS)}")
    started = time.monotonic()
    stamp_path = os.path.join(outdir, _STAMP)
    outputs = [os.path.join(outdir, KERNEL_NAME), os.path.join(outdir, INITRD_NAME)]
    if not force and not os.path.exists(stamp_path):
        foreign = [p for p in outputs if os.path.exists(p)]
        if foreign:
            raise ImageError("%s: not built by build-image.sh (no %s beside it); keeping it. Pass --force to "
                             "replace it, or build into another directory" % (", ".join(foreign), _STAMP))
    own = kernel_kind == KERNEL_OWN
    kpkg = debs.versioned_package(*((kbuild.SOURCE_META, "linux-source-") if own
                                    else ("linux-image-amd64", "linux-image-")))
    packages = debs.candidates((kpkg, *PACKAGES))
    here = os.path.dirname(os.path.abspath(__file__))
    kernel_input = ("kernel", kernel_kind + (":" + kbuild.build_key(kpkg, dict(packages)[kpkg]) if own else ""))
    digest = _digest([*packages, kernel_input], [here, _source_dir("kuasar_vmm_task"), _source_dir("kuasar_shared")])
    if not force and all(os.path.exists(p) for p in outputs) and os.path.exists(stamp_path):
        with open(stamp_path) as handle:
            record: dict[str, object] = json.load(handle)
        if record.get("digest") == digest:
            record["cached"] = True
            return record
    deb_cache = os.path.join(cache, "debs")
    # the kernel source package (~140 MB) is fetched only when its build is not cached
    found = debs.fetch([p for p in packages if not (own and p[0] == kpkg)], deb_cache)
    if own:
        vmlinux = kbuild.kernel(kpkg, dict(packages)[kpkg], deb_cache, kbuild.cache_dir(cache))
    os.makedirs(outdir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kuasar-image-", dir=cache) as work:
        stage, kroot = os.path.join(work, "stage"), os.path.join(work, "kernel")
        for name, deb in found.items():
            debs.unpack(deb, kroot if name == kpkg else stage)
        stage1, rootfs = os.path.join(work, "stage1"), os.path.join(work, "rootfs")
        _stage1(stage1, os.path.join(here, "init.sh"))
        _rootfs(rootfs, stage)
        if not own:
            boot = os.path.join(kroot, "boot")
            vmlinuz = next(os.path.join(boot, f) for f in os.listdir(boot) if f.startswith("vmlinuz-"))
            with open(vmlinuz, "rb") as handle:
                vmlinux = kernel.extract_vmlinux(handle.read())
            _modules(rootfs, kroot)
        with tempfile.TemporaryFile() as raw:
            cpio.write_tree(raw, [(stage1, ""), (rootfs, "rootfs")], char_devices=[("dev/console", 5, 1)])
            raw.seek(0)
            initrd = raw.read()
        rootfs_bytes = sum(os.lstat(os.path.join(d, f)).st_size for d, _s, fs in os.walk(rootfs) for f in fs)
    _write_atomic(outputs[0], vmlinux)
    _write_atomic(outputs[1], initrd)
    record = {"digest": digest, "packages": dict(packages), "kernel": kernel_kind, "kernel_bytes": len(vmlinux),
              "initrd_bytes": len(initrd), "rootfs_bytes": rootfs_bytes,
              "build_seconds": round(time.monotonic() - started, 2), "cached": False}
    _write_atomic(stamp_path, json.dumps(record, indent=1, sort_keys=True).encode())
    return record


def main(argv: "List[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(prog="build-image.sh", description=__doc__.split("\n")[0])
    parser.add_argument("outdir", nargs="?", default=default_outdir(),
                        help="default: $%s, else %s" % (ENV_IMAGE_DIR, DEFAULT_OUTDIR))
    parser.add_argument("--cache", default="", help="where .debs and work files go (default: <outdir>/.cache)")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even when the stamp matches, and replace an image this script did not build")
    parser.add_argument("--kernel", choices=KERNELS, default=KERNEL_OWN,
                        help="own: built from Debian's linux-source with the guest's drivers built in (default; the "
                             "first build takes minutes, then it is cached); debian: Debian's generic kernel and its "
                             "modules")
    args = parser.parse_args(argv)
    outdir = os.path.abspath(args.outdir)
    try:
        record = build(outdir, os.path.abspath(args.cache or os.path.join(outdir, ".cache")), args.force,
                       args.kernel)
    except ImageError as err:
        print(f"build-image: {err}", file=sys.stderr)
        return 1
    print(json.dumps({k: v for k, v in record.items() if k != "packages"}, sort_keys=True))
    return 0
