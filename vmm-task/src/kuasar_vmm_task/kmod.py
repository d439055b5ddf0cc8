"""Loading the guest's kernel modules from PID 1 with ``finit_module``, one process for all of them.

Stage 1 used to run one busybox ``insmod`` per module from a shell loop: 24 execs (and the loop's parsing of
the command line for each) cost ~0.2 s of boot under TCG beyond the modules' own initialisation. The
image lists the modules in dependency order in :data:`ORDER_FILE` (see ``image/build.py``).
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
from typing import Callable, List, Optional

__all__ = ["MODULES_DIR", "ORDER_FILE", "KmodError", "module_params", "finit_module", "load_modules"]

log = logging.getLogger(__name__)

#: where the image puts the ``.ko`` files and :data:`ORDER_FILE`
MODULES_DIR = "/lib/modules/kuasar"
ORDER_FILE = "modules.order"
#: ``finit_module`` by machine (<asm/unistd.h>); os has no wrapper in Python 3.11
_SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}


class KmodError(OSError):
    """A module could not be loaded: ``errno`` is the kernel's answer, the message names the module."""

    def __str__(self) -> str:
        return str(self.strerror)


def _norm(name: str) -> str:
    return name.replace("-", "_")


def module_params(module: str, cmdline: str) -> str:
    """The ``module.param=value`` words of the kernel command line for ``module``, as ``param=value``
    words: the kernel hands such words to built-in drivers only (e.g. the ``virtio_mmio.device=`` that
    QEMU's microvm appends); for a loadable module passing them is the loader's job."""
    prefix = _norm(module) + "."
    words = []
    for word in cmdline.split():
        head, dot, rest = word.partition(".")
        if dot and "=" in rest and _norm(head) + "." == prefix:
            words.append(rest)
    return " ".join(words)


def _syscall() -> Callable[..., int]:
    machine = os.uname().machine  # not platform.machine(): importing platform costs ~20 ms of boot under TCG
    number = _SYS_FINIT_MODULE.get(machine)
    if number is None:
        raise KmodError(errno.ENOSYS, "finit_module: no syscall number known for machine %r" % machine)
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    return lambda fd, params: int(syscall(ctypes.c_long(number), ctypes.c_int(fd), ctypes.c_char_p(params),
                                          ctypes.c_int(0)))


def finit_module(path: str, params: str = "", _call: Optional[Callable[..., int]] = None) -> bool:
    """Load the module file ``path``; False when it is loaded already (EEXIST).

    :raise KmodError: the file cannot be opened, or the kernel refused the module.
    """
    call = _call or _syscall()
    name = os.path.basename(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise KmodError(err.errno, "cannot open kernel module %s: %s" % (path, err.strerror)) from None
    try:
        if call(fd, params.encode()) == 0:
            return True
        code = ctypes.get_errno()
    finally:
        os.close(fd)
    if code == errno.EEXIST:
        return False
    raise KmodError(code, "loading kernel module %s%s failed: %s" % (name, " (%s)" % params if params else "",
                                                                        os.strerror(code)))


def load_modules(directory: str = MODULES_DIR, cmdline: str = "", remove: bool = True) -> List[str]:
    """Load every module listed in ``directory``/:data:`ORDER_FILE`, in that order; return the names
    loaded. A module that fails is logged and the rest still load (the agent must answer the host
    even so). ``remove``: delete ``directory`` afterwards (its files sit in the guest's RAM).
    A missing directory (an image without modules) loads nothing."""
    try:
        with open(os.path.join(directory, ORDER_FILE)) as handle:
            names = [line.strip() for line in handle if line.strip()]
    except FileNotFoundError:
        return []
    call = _syscall()
    loaded = []
    for name in names:
        module = name[:-3] if name.endswith(".ko") else name
        try:
            if finit_module(os.path.join(directory, name), module_params(module, cmdline), call):
                loaded.append(module)
        except KmodError as err:
            log.error("%s", err)
    if remove:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    return loaded
