"""Commands that sandbox-type packages add to kuasar-ctl, so that kuasar-ctl names no sandbox type's service.

A package offers an entry point in the ``kuasar.ctl`` group (name = sandbox type, value = an
:data:`AddCommands` callable). kuasar-ctl calls each one with its subcommand parsers; the callable adds
its subcommands and sets ``run`` on each (``parser.set_defaults(run=handler)``), a :data:`Handler` that
kuasar-ctl awaits with its engine and the parsed arguments, and whose result is the exit status.
"""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Awaitable, Callable

if TYPE_CHECKING:
    from kuasar_shared.ctl.engine import Engine

__all__ = ["ENTRY_POINT_GROUP", "Handler", "AddCommands", "add_plugin_commands"]

#: entry-point group through which a sandbox-type package adds kuasar-ctl subcommands
ENTRY_POINT_GROUP = "kuasar.ctl"

Handler = Callable[["Engine", argparse.Namespace], Awaitable[int]]
AddCommands = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def add_plugin_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Let every installed package of the ``kuasar.ctl`` group add its subcommands to ``sub``."""
    from importlib.metadata import entry_points

    found = entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, ())
    for ep in sorted(group, key=lambda ep: ep.name):
        add: AddCommands = ep.load()
        add(sub)
