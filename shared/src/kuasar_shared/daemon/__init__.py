"""The common daemon start-up: arguments, logging, signals, sd_notify, watchdog, child reaper.

Each sandboxer's ``main()`` is wiring only::

    args = parse_args("runc-sandboxer", __version__, sandbox_type="runc")
    return run_daemon("runc-sandboxer", __version__, args, serve)

Names are imported on first use (PEP 562): importing one submodule (the vmm guest needs only
``reaper`` and ``log``) must not pull in argparse and the daemon runner.
"""
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kuasar_shared.daemon.args import build_parser, parse_args, version_string
    from kuasar_shared.daemon.reaper import ExitEvent, Reaper, get_reaper, set_child_subreaper
    from kuasar_shared.daemon.run import DaemonContext, run_daemon

__all__ = ["build_parser", "parse_args", "version_string", "ExitEvent", "Reaper", "get_reaper",
           "set_child_subreaper", "DaemonContext", "run_daemon"]

_EXPORTS = {"build_parser": "args", "parse_args": "args", "version_string": "args", "ExitEvent": "reaper",
            "Reaper": "reaper", "get_reaper": "reaper", "set_child_subreaper": "reaper",
            "DaemonContext": "run", "run_daemon": "run"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
