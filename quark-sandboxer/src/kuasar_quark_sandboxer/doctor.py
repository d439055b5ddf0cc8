"""``kuasar-ctl doctor --type quark``: the application kernel the config chooses, and its binary."""
from __future__ import annotations

import os

from kuasar_shared.config import ConfigError
from kuasar_shared.doctor import Finding, Sandboxer, Status, binary_version

from kuasar_quark_sandboxer import config


def checks(sandboxer: Sandboxer) -> list[Finding]:
    try:
        cfg = config.load(sandboxer.config)
    except ConfigError as err:
        return [Finding(Status.FAIL, "config", str(err), "fix the file (see examples/quark/config_quark.toml)")]
    source = sandboxer.config or (config.DEFAULT_CONFIG if os.path.exists(config.DEFAULT_CONFIG)
                                  else "built-in defaults")
    found = [Finding(Status.OK, "config", "%s, kernel %s" % (source, cfg.sandbox.kernel))]
    if cfg.sandbox.kernel == "runsc":
        found.append(binary_version("runsc", cfg.runsc.path, ("--version",),
                                    fix="install gVisor's runsc (apt install runsc) or set [runsc].path"))
        platform = Finding(Status.OK, "runsc platform", cfg.runsc.platform)
        if cfg.runsc.platform == "kvm":
            platform = Finding(Status.WARN, "runsc platform", "kvm needs /dev/kvm with hardware virtualisation",
                               "use platform = \"systrap\" or \"ptrace\" where KVM is not usable")
        found.append(platform)
    else:
        found.append(binary_version("quark", cfg.quark.path, ("--version",),
                                    fix="install Quark's quark binary or set [quark].path"))
    return found
