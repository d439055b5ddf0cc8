"""``vmm-sandboxer``: wiring only — config, the ``[hypervisor] type``'s backend, relay, recovery, Sandbox API."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional, Sequence

from kuasar_shared.config import ConfigError
from kuasar_shared.daemon.args import parse_args
from kuasar_shared.daemon.run import DaemonContext, run_daemon
from kuasar_shared.sandbox.server import serve_until_shutdown
from kuasar_shared.sandbox.task_supervisor import TaskServer, find_command

from kuasar_vmm_sandboxer import __version__, config, hypervisors
from kuasar_vmm_sandboxer.sandboxer import VmmSandboxer

NAME = "vmm-sandboxer"
RELAY = find_command("vmm-task-relay", "kuasar_vmm_sandboxer.relay.main")
log = logging.getLogger(__name__)
#: a pod's sockets live in ``<dir>/<pod id>/``: containerd's ids have 64 characters, the longest socket
#: name is virtiofsd's, and a unix socket path holds at most 107 bytes
_POD_ID_LENGTH = 64
_LONGEST_POD_SOCKET = "virtiofs.sock"
_UNIX_PATH_MAX = 107


def socket_room_warning(directory: str) -> Optional[str]:
    """Why pods with containerd's ids cannot start under ``directory`` (their unix socket paths would be too
    long for QEMU), or None. Shorter ids (kuasar-ctl's) may still fit, so this is a warning, not a refusal."""
    longest = len(os.path.join(directory, "x" * _POD_ID_LENGTH, _LONGEST_POD_SOCKET).encode())
    if longest <= _UNIX_PATH_MAX:
        return None
    room = _UNIX_PATH_MAX - (longest - len(directory.encode()))
    return (f"--dir {directory} is too long for containerd's pods: their VMs may fail to start, as the longest "
            f"of their sockets, <dir>/<64-character pod id>/{_LONGEST_POD_SOCKET}, takes {longest} bytes where a "
            f"unix socket path holds {_UNIX_PATH_MAX}; use a directory of at most {room} bytes (the default is "
            f"/run/kuasar-vmm)")


def load_config(path: str, explicit: bool) -> config.VmmConfig:
    """The config file; a missing default file means built-in defaults, a missing explicit one is an error."""
    if not explicit and not os.path.exists(path):
        log.warning("%s does not exist; using built-in defaults", path)
        return config.parse("", "<built-in defaults>")  # the default type's own defaults
    return config.load(path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(NAME, __version__, argv, sandbox_type="vmm", config=None)
    explicit = args.config is not None
    args.config = args.config or config.DEFAULT_CONFIG
    args.dir = os.path.abspath(args.dir)
    try:
        cfg = load_config(args.config, explicit)
    except ConfigError as err:
        print("%s: %s" % (NAME, err), file=sys.stderr)
        return 2
    if cfg.sandbox.log_level and "--log-level" not in (argv if argv is not None else sys.argv):
        args.log_level = cfg.sandbox.log_level

    async def serve(ctx: DaemonContext) -> None:
        too_long = socket_room_warning(args.dir)
        if too_long:
            log.warning("%s", too_long)
        os.makedirs(args.dir, mode=0o700, exist_ok=True)
        log_file = os.path.join(args.dir, "vmm-task-relay.log") if args.daemon else None
        relay = await TaskServer.ensure(args.dir, RELAY, args.log_level, log_file)
        relay.supervise()
        backend = hypervisors.backend(cfg.hypervisor.type)
        sandboxer = VmmSandboxer(args.dir, cfg, backend.factory(cfg.hypervisor), backend.hooks(), relay,
                                 args.log_level)
        # the first sync is a minute away: the pods recovered by then are synced too
        ctx.create_task(sandboxer.sync_clocks(), name="clock-sync")
        ctx.create_task(sandboxer.prepare_default_class(), name="prepare-default-vm-class")
        try:
            await serve_until_shutdown(ctx, sandboxer, "relay pid %d" % relay.pid)
        finally:
            await sandboxer.close()

    return run_daemon(NAME, __version__, args, serve)


if __name__ == "__main__":
    sys.exit(main())
