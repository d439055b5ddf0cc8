"""Cold boot to the guest agent (issue 18): QEMU spawn to the first Check answered, per variant.

Each boot is the sandboxer's own VM (``QemuVM`` of the shipped ``config_qemu.toml``: its machine type, vCPUs,
memory and kernel command line) booting a guest image cold; a variant appends kernel parameters and may boot
an image of its own (``--image NAME=DIR``, e.g. one built with ``--kernel debian``). Boots
alternate between the variants (round-robin) so that a change of machine load hits all of them alike, and run
under ``flock /tmp/kuasar-vm.lock`` like every QEMU user on the machine. The guest's own uptimes come from the
agent's log lines on the console (``starting``, ``modules loaded``, ``serving``).

    .venv/bin/python tests/benchmark/bench_coldboot.py --boots 4 --variant base= \\
        --variant nokprobe=initcall_blacklist=init_kprobe_trace --out results/vmm-coldboot-params.json
    .venv/bin/python tests/benchmark/bench_coldboot.py --variant own= --variant debian= --image debian=/tmp/deb-image
"""
from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Optional, Sequence

from kuasar_vmm_sandboxer import config
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.factory import QemuFactory
from kuasar_vmm_sandboxer.hypervisors.qemu.template import agent_session
from kuasar_vmm_sandboxer.hypervisors.qemu.vm import QemuVM
from kuasar_vmm_sandboxer.vm import VMSpec
from kuasar_vmm_task.image.build import build, default_outdir

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VM_LOCK = "/tmp/kuasar-vm.lock"
#: the agent's console lines that carry its uptime
_MARKS = {"starting": re.compile(r"vmm-task \S+ starting .*uptime ([0-9.]+) s"),
          "modules_loaded": re.compile(r"kernel modules loaded \(uptime ([0-9.]+) s\)"),
          "serving": re.compile(r"serving ttrpc over the mux .*uptime ([0-9.]+) s")}


def shipped_config(image_dir: str) -> QemuConfig:
    """The shipped hypervisor config, resolved as the factory resolves it, booting ``image_dir``'s image."""
    cfg = config.load(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")).hypervisor
    assert isinstance(cfg, QemuConfig)
    cfg.kernel_path = os.path.join(image_dir, "vmlinux.bin")
    cfg.initrd_path = os.path.join(image_dir, "kuasar.initrd")
    return QemuFactory(cfg).config


def guest_marks(console: str) -> dict[str, float]:
    """The agent's uptimes found in ``console`` (seconds since the guest kernel started its clock)."""
    found = {}
    for name, pattern in _MARKS.items():
        match = pattern.search(console)
        if match:
            found[name] = float(match.group(1))
    return found


async def boot_once(cfg: QemuConfig, vcpus: int, memory_mb: int, work: str) -> dict[str, Any]:
    """Boot one VM to its agent's Check; the host's seconds and the guest's marks."""
    pod_dir = tempfile.mkdtemp(prefix="cb", dir=work)
    vm = QemuVM(VMSpec("coldboot-" + uuid.uuid4().hex[:8], pod_dir, vcpus, memory_mb), cfg)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await vm.start()
    try:
        async with agent_session(vm.agent_socket, 120, vm):  # entered once the agent answered Check
            seconds = loop.time() - began
    finally:
        await vm.stop(force=True)
    with open(vm.path("console.log"), errors="replace") as handle:
        marks = guest_marks(handle.read())
    return {"boot_s": round(seconds, 3), **{k: round(v, 3) for k, v in marks.items()}}


def _summary(boots: list[dict[str, Any]]) -> dict[str, Any]:
    times = [b["boot_s"] for b in boots]
    out: dict[str, Any] = {"n": len(times), "boot_s": times, "boot_mean_s": round(statistics.mean(times), 3),
                           "boot_median_s": round(statistics.median(times), 3)}
    for mark in _MARKS:
        values = [b[mark] for b in boots if mark in b]
        if values:
            out[f"guest_{mark}_mean_s"] = round(statistics.mean(values), 3)
    return out


async def run(variants: dict[str, str], boots: int, images: dict[str, str], vcpus: int,
              memory_mb: int) -> dict[str, Any]:
    """``images``: the image directory of each variant."""
    configs = {name: shipped_config(images[name]) for name in variants}
    base = next(iter(configs.values()))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory(prefix="kcb", dir="/tmp") as work:
        for round_no in range(boots):
            for name, params in variants.items():
                cfg = QemuConfig(**{**configs[name].__dict__, "kernel_params": " ".join(
                    p for p in (configs[name].kernel_params, params) if p)})
                with open(VM_LOCK, "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    boot = await boot_once(cfg, vcpus, memory_mb, work)
                boot["load"] = round(os.getloadavg()[0], 2)
                results[name].append(boot)
                print(f"round {round_no + 1} {name}: {boot}", flush=True)
    loads.append(os.getloadavg()[0])
    return {"what": "cold boot, QEMU spawn to the agent's first Check answered (QemuVM of the shipped "
                    "config_qemu.toml; variants append kernel parameters; boots alternate between variants)",
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_begin_end": loads,
            "machine_type": base.machine_type, "vcpus": vcpus, "memory_mb": memory_mb,
            "variants": {name: {"kernel_params": variants[name], "image_dir": images[name], **_summary(results[name]),
                                "boots": results[name]} for name in variants}}


def _variant(text: str) -> tuple[str, str]:
    name, sep, params = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"variant {text!r}: expected NAME=KERNEL_PARAMS (params may be empty)")
    return name, params


def _image(text: str) -> tuple[str, str]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"image {text!r}: expected NAME=DIRECTORY")
    return name, os.path.abspath(directory)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--boots", type=int, default=4, help="boots per variant (default 4)")
    parser.add_argument("--variant", type=_variant, action="append", default=[],
                        help="NAME=EXTRA_KERNEL_PARAMS (repeatable; default: one variant 'shipped=')")
    parser.add_argument("--vcpus", type=int, default=0, help="default: the config's vcpus")
    parser.add_argument("--memory-mb", type=int, default=0, help="default: the config's memory_in_mb")
    parser.add_argument("--image-dir", default=default_outdir(), help="the image of variants without --image")
    parser.add_argument("--image", type=_image, action="append", default=[],
                        help="NAME=DIR: variant NAME boots the image in DIR (built beforehand; repeatable)")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args(argv)
    if args.boots < 1:
        parser.error("--boots must be at least 1")
    variants = dict(args.variant or [("shipped", "")])
    if len(variants) != len(args.variant or [1]):
        parser.error("variant names must differ")
    images = {name: args.image_dir for name in variants}
    for name, directory in args.image:
        if name not in variants:
            parser.error(f"--image {name}: no variant of that name")
        if not os.path.exists(os.path.join(directory, "vmlinux.bin")):
            parser.error(f"--image {name}: {directory} holds no vmlinux.bin")
        images[name] = directory
    build(args.image_dir, os.path.join(args.image_dir, ".cache"))
    shipped = shipped_config(args.image_dir)
    result = asyncio.run(run(variants, args.boots, images, args.vcpus or shipped.vcpus,
                             args.memory_mb or shipped.memory_in_mb))
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
