"""``config_quark.toml``: which application kernel runs the pods, and how it is invoked.

::

    [sandbox]
    kernel = "runsc"            # or "quark"
    log_level = ""              # overrides --log-level when set

    [runsc]
    path = "runsc"
    platform = "ptrace"         # ptrace | systrap | kvm
    network = "sandbox"         # sandbox (gVisor netstack in the pod netns) | host | none
    extra_flags = []            # more global runsc flags, e.g. ["--debug"]
    hide_proc_sys_net = true    # see RunscConfig

    [quark]
    path = "quark"

A missing file at the default path means all defaults; a file given with ``--config`` must exist.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from kuasar_shared.config import ConfigError, load_config

__all__ = ["SandboxConfig", "RunscConfig", "QuarkConfig", "Config", "DEFAULT_CONFIG", "KERNELS",
           "PLATFORMS", "NETWORKS", "load"]

DEFAULT_CONFIG = "/var/lib/kuasar/config_quark.toml"
KERNELS = ("runsc", "quark")
PLATFORMS = ("ptrace", "systrap", "kvm")
NETWORKS = ("sandbox", "host", "none")


@dataclass
class SandboxConfig:
    kernel: str = "runsc"
    log_level: str = ""


@dataclass
class RunscConfig:
    """gVisor's ``runsc``.

    ``network``: ``sandbox`` runs gVisor's own network stack inside the pod's network namespace
    (pods without one get ``none``); ``host`` passes the sandbox's socket calls to the pod's
    network namespace; ``none`` gives pods loopback only. ``hide_proc_sys_net``: runsc releases
    before 2023 decide that they sit in the root network namespace when
    ``/proc/sys/net/core/rmem_default`` exists, which on kernels >= 5.x is true in every namespace;
    the pod's root container is then started in a private mount namespace with an empty
    ``/proc/sys/net`` (the sandbox itself is not affected).
    """

    path: str = "runsc"
    platform: str = "ptrace"
    network: str = "sandbox"
    extra_flags: list[str] = field(default_factory=list)
    hide_proc_sys_net: bool = True


@dataclass
class QuarkConfig:
    """Quark's ``quark`` binary (upstream contract: ``quark -r <bundle> sandbox --task-socket ...``)."""

    path: str = "quark"


@dataclass
class Config:
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    runsc: RunscConfig = field(default_factory=RunscConfig)
    quark: QuarkConfig = field(default_factory=QuarkConfig)


def _check(config: Config, path: str) -> Config:
    for key, value, allowed in (("sandbox.kernel", config.sandbox.kernel, KERNELS),
                                ("runsc.platform", config.runsc.platform, PLATFORMS),
                                ("runsc.network", config.runsc.network, NETWORKS)):
        if value not in allowed:
            raise ConfigError(path, key, f"expected one of {', '.join(allowed)}, got {value!r}")
    return config


def load(path: Optional[str]) -> Config:
    """The configuration at ``path``; None means :data:`DEFAULT_CONFIG` if it exists, else defaults.

    :raise ConfigError: naming the file and key for a missing explicit file, a wrong type or an
        unknown choice.
    """
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            return Config()
        path = DEFAULT_CONFIG
    return _check(load_config(path, Config), path)
