"""The common daemon start-up: arguments, logging, signals, sd_notify, watchdog, child reaper.

Each sandboxer's ``main()`` is wiring only::

    args = parse_args("runc-sandboxer", __version__, sandbox_type="runc")
    return run_daemon("runc-sandboxer", __version__, args, serve)
"""
from kuasar_shared.daemon.args import build_parser, parse_args, version_string
from kuasar_shared.daemon.reaper import ExitEvent, Reaper, get_reaper, set_child_subreaper
from kuasar_shared.daemon.run import DaemonContext, run_daemon

__all__ = ["build_parser", "parse_args", "version_string", "ExitEvent", "Reaper", "get_reaper",
           "set_child_subreaper", "DaemonContext", "run_daemon"]
