"""``kuasar-ctl templates``: lists the VM templates of a sandboxer's config, ``templates rm DIGEST|--all``
removes them (running pods keep their memory; the next pod makes a new one).

:func:`add_commands` is called by :func:`kuasar_vmm_sandboxer.ctl.add_commands` (the ``kuasar.ctl`` entry
point); :func:`main` runs the same command alone (``vmm-templates``).
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any, Optional, Sequence

from kuasar_shared.config import ConfigError
from kuasar_shared.errors import NotFound

from kuasar_vmm_sandboxer import __version__, config
from kuasar_vmm_sandboxer.hypervisors.qemu.config import QemuConfig
from kuasar_vmm_sandboxer.hypervisors.qemu.template import TemplateStore

__all__ = ["add_commands", "main"]


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=config.DEFAULT_CONFIG, help="the sandboxer's config (its template_dir)")
    p.add_argument("action", nargs="?", choices=("ls", "rm"), default="ls")
    p.add_argument("digest", nargs="?", default="", help="rm: the template (a digest prefix)")
    p.add_argument("--all", action="store_true", help="rm: every template")


def add_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add ``templates`` to kuasar-ctl's subcommands."""
    p = sub.add_parser("templates", help="list or remove the vmm sandboxer's VM templates")
    _add_arguments(p)
    p.set_defaults(run=run)


def _store(path: str) -> TemplateStore:
    """:raise ConfigError: the config is unreadable or not a QEMU one."""
    hv = config.load(path).hypervisor
    if not isinstance(hv, QemuConfig):
        raise ConfigError(path, "[hypervisor].type", "templates are made by the qemu hypervisor only")
    return TemplateStore(hv.template_dir)


async def run(engine: Any, args: argparse.Namespace) -> int:
    """The ``templates`` command (``engine`` unused: templates are files of the host, not pods)."""
    try:
        store = _store(args.config)
    except ConfigError as err:
        print("kuasar-ctl templates: %s" % err, file=sys.stderr)
        return 2
    if args.action == "ls":
        rows = [["DIGEST", "CREATED", "VCPUS", "MEMORY", "NICS", "DISK", "MADE IN"]]
        rows += [[t.digest[:12], t.created, str(t.vcpus), "%d MiB" % t.memory_mb, str(t.nics),
                  "%d MiB" % (t.bytes_on_disk >> 20), "%.1f s" % t.build_seconds] for t in store.all()]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0
    if bool(args.digest) == args.all:
        print("kuasar-ctl templates rm: give one DIGEST or --all", file=sys.stderr)
        return 2
    try:
        for name in store.remove(args.digest):
            print(name)
    except NotFound as err:
        print("kuasar-ctl templates rm: %s" % err.message, file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="vmm-templates", description="list or remove the vmm sandboxer's VM "
                                     "templates (also: kuasar-ctl -s vmm templates)")
    parser.add_argument("--version", action="version", version=f"vmm-templates {__version__}")
    _add_arguments(parser)
    return asyncio.run(run(None, parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
