"""The hypervisor backends: one package per hypervisor, each exporting ``BACKEND``.

A backend package (``qemu``, ``stratovirt``, ``cloud_hypervisor``) has the same module names as the
others (``config``, ``factory``, ``hooks``, ``vm``, ``devices``, its control client) and names itself
in ``BACKEND``: the ``[hypervisor] type`` that selects it, the dataclass of its ``[hypervisor]`` keys,
its :class:`~kuasar_vmm_sandboxer.vm.VMFactory` and its :class:`~kuasar_vmm_sandboxer.vm.Hooks`.
Packages are found by listing this directory, so adding a hypervisor is adding a package (and its
config file), nothing else.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Type

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.vm import Hooks, VMFactory

__all__ = ["Backend", "backends"]


@dataclass(frozen=True)
class Backend:
    """What the sandboxer needs from a hypervisor package."""

    #: the ``[hypervisor] type`` value
    name: str
    config: Type[HypervisorConfig]
    #: builds the factory from the loaded ``[hypervisor]`` table (may decide host facts once, and log them)
    factory: Callable[[HypervisorConfig], VMFactory]
    hooks: Callable[[], Hooks]


@functools.lru_cache(maxsize=None)
def backends() -> dict[str, Backend]:
    """Every backend package below this one, by name. :raise TypeError: a package has no ``BACKEND``."""
    found: dict[str, Backend] = {}
    for info in pkgutil.iter_modules(__path__):
        if not info.ispkg:
            continue
        module = importlib.import_module("%s.%s" % (__name__, info.name))
        backend = getattr(module, "BACKEND", None)
        if not isinstance(backend, Backend):
            raise TypeError("hypervisor package %s does not export a BACKEND" % module.__name__)
        found[backend.name] = backend
    return found
