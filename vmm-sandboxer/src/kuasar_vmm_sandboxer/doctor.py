"""``kuasar-ctl doctor --type vmm``: the config, the hypervisor binary, the accelerator pods will get, and
the guest image the config points at."""
from __future__ import annotations

import json
import os

from kuasar_shared.config import ConfigError
from kuasar_shared.doctor import Finding, Sandboxer, Status, binary_version

from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.accel import choose
from kuasar_vmm_sandboxer.kvm import probe_kvm

#: the stamp ``vmm-task/build-image.sh`` writes beside the image it built
_IMAGE_STAMP = "kuasar-image.stamp"
#: the ``[hypervisor]`` key naming the binary, by hypervisor type
_BINARY_KEYS = ("qemu_path", "path", "stratovirt_path", "cloud_hypervisor_path")


def _load(sandboxer: Sandboxer) -> tuple[config.VmmConfig, str]:
    if sandboxer.config:
        return config.load(sandboxer.config), sandboxer.config
    if os.path.exists(config.DEFAULT_CONFIG):
        return config.load(config.DEFAULT_CONFIG), config.DEFAULT_CONFIG
    return config.parse("", "<built-in defaults>"), "built-in defaults"


def _accelerator(hv: config.HypervisorConfig) -> Finding:
    configured = getattr(hv, "accel", None)
    if configured is None:  # hypervisors without an emulation fallback
        probe = probe_kvm()
        if probe.usable:
            return Finding(Status.OK, "accelerator", "KVM: " + probe.reason)
        return Finding(Status.FAIL, "accelerator", "%s needs KVM, and %s" % (hv.type, probe.reason),
                       "use [hypervisor] type = \"qemu\" (it emulates with TCG) on this host")
    choice = choose(configured)
    if choice.error:
        return Finding(Status.FAIL, "accelerator", choice.error, "set [hypervisor] accel = \"auto\"")
    if choice.accel == "tcg":
        return Finding(Status.WARN, "accelerator", "TCG will be used (emulation: pods boot in seconds, not "
                       "milliseconds): %s" % choice.reason, "a host with VMX/SVM KVM for production")
    return Finding(Status.OK, "accelerator", "KVM: " + choice.reason)


def _image(hv: config.HypervisorConfig) -> list[Finding]:
    found = []
    for key in ("kernel_path", "initrd_path", "image_path"):
        path = getattr(hv, key, "")
        if not path:
            continue
        if os.path.isfile(path):
            found.append(Finding(Status.OK, "guest " + key.split("_")[0], "%s (%.1f MiB)"
                                 % (path, os.path.getsize(path) / (1 << 20))))
        else:
            found.append(Finding(Status.FAIL, "guest " + key.split("_")[0], "%s does not exist ([hypervisor].%s)"
                                 % (path, key), "vmm-task/build-image.sh %s (or install kuasar-vmm-guest)"
                                 % os.path.dirname(path)))
    kernel_dir = os.path.dirname(hv.kernel_path)
    stamp = os.path.join(kernel_dir, _IMAGE_STAMP)
    if os.path.isfile(stamp):
        try:
            with open(stamp, encoding="utf-8") as handle:
                record = json.load(handle)
            kernel = next((v for k, v in record.get("packages", {}).items() if k.startswith("linux-image")), "?")
            found.append(Finding(Status.OK, "guest image build", "built by build-image.sh from Debian packages "
                                 "(kernel %s, runc %s)" % (kernel, record.get("packages", {}).get("runc", "?"))))
        except (OSError, ValueError) as err:
            found.append(Finding(Status.WARN, "guest image build", "%s is unreadable: %s" % (stamp, err),
                                 "rebuild: vmm-task/build-image.sh --force %s" % kernel_dir))
    return found


def checks(sandboxer: Sandboxer) -> list[Finding]:
    try:
        cfg, source = _load(sandboxer)
    except ConfigError as err:
        return [Finding(Status.FAIL, "config", str(err), "fix the file (see the shipped config_*.toml)")]
    hv = cfg.hypervisor
    found = [Finding(Status.OK, "config", "%s, hypervisor %s" % (source, hv.type))]
    binary = next((getattr(hv, key) for key in _BINARY_KEYS if getattr(hv, key, "")), "")
    if binary:
        found.append(binary_version(hv.type, binary, fix="install %s or set [hypervisor] path" % hv.type))
    found.append(_accelerator(hv))
    found.extend(_image(hv))
    return found
