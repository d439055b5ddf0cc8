"""The hypervisor backends: one package per hypervisor, each exporting ``BACKEND``.

A backend package (``qemu``, ``stratovirt``, ``cloud_hypervisor``) has the same module names as the
others (``config``, ``factory``, ``hooks``, ``vm``, ``devices``, its control client) and names itself
in ``BACKEND``: the ``[hypervisor] type`` that selects it, the dataclass of its ``[hypervisor]`` keys,
its :class:`~kuasar_vmm_sandboxer.vm.VMFactory` and its :class:`~kuasar_vmm_sandboxer.vm.Hooks`.
Packages are found by listing this directory, so adding a hypervisor is adding a package (and its
config file), nothing else. A package is named for its type with ``-`` as ``_`` (``cloud-hypervisor`` is
``cloud_hypervisor``), so the sandboxer imports only the configured backend (each costs tens of ms of a
restart).
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional, Protocol, Type

from kuasar_vmm_sandboxer.config import HypervisorConfig
from kuasar_vmm_sandboxer.kvm import KvmProbe
from kuasar_vmm_sandboxer.vm import Hooks, VMFactory

__all__ = ["Backend", "FactoryMaker", "backend", "backends", "names"]


class FactoryMaker(Protocol):
    """Builds a backend's factory from the loaded ``[hypervisor]`` table; ``kvm`` replaces probing this host's
    KVM (tests running fakes of a hypervisor that needs it)."""

    def __call__(self, config: HypervisorConfig, kvm: Optional[KvmProbe] = None) -> VMFactory: ...


@dataclass(frozen=True)
class Backend:
    """What the sandboxer needs from a hypervisor package."""

    #: the ``[hypervisor] type`` value
    name: str
    config: Type[HypervisorConfig]
    #: builds the factory (which may decide host facts once, and log them)
    factory: FactoryMaker
    hooks: Callable[[], Hooks]


def names() -> list[str]:
    """The ``[hypervisor] type`` of every backend package below this one, sorted; nothing is imported."""
    return sorted(info.name.replace("_", "-") for info in pkgutil.iter_modules(__path__) if info.ispkg)


@functools.lru_cache(maxsize=None)
def backend(name: str) -> Backend:
    """The backend of ``[hypervisor] type`` ``name``, importing only its package.

    :raise KeyError: no package is named for ``name``. :raise TypeError: the package has no ``BACKEND`` of
        that name.
    """
    if name not in names():
        raise KeyError(name)
    module = importlib.import_module("%s.%s" % (__name__, name.replace("-", "_")))
    found = getattr(module, "BACKEND", None)
    if not isinstance(found, Backend) or found.name != name:
        raise TypeError("hypervisor package %s does not export a BACKEND named %r" % (module.__name__, name))
    return found


def backends() -> dict[str, Backend]:
    """Every backend, by name (imports them all). :raise TypeError: a package has no matching ``BACKEND``."""
    return {name: backend(name) for name in names()}
