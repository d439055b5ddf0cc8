"""kuasar-ctl: a crictl-like command line that drives Kuasar sandboxers the way containerd 2.x does.

    kuasar-ctl -s runc run pod.yaml ctr.yaml      runp + create + start; prints pod id and container id
    kuasar-ctl runp pod.yaml | create POD ctr.yaml pod.yaml | start CTR
    kuasar-ctl pods | ps [-a] | inspect CTR | inspectp POD | logs [-f] CTR
    kuasar-ctl exec [-i] [--timeout S] CTR -- cmd...   (exit code passed through; timeout -> 124)
    kuasar-ctl stop CTR | rm CTR | stopp POD | rmp POD
    kuasar-ctl doctor [--type T]          (preflight of this host for each installed sandbox type)

Sandbox-type packages add their own subcommands through the ``kuasar.ctl`` entry-point group
(:mod:`kuasar_shared.ctl.plugins`).

Ids are accepted by unique prefix. ``-s/--sandboxer`` picks ``/run/<type>-sandboxer.sock`` unless
``--endpoint`` is given; ``--io`` chooses FIFO or streaming stdio for new containers.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any, Optional, Sequence

from kuasar_shared.ctl import config
from kuasar_shared import __version__
from kuasar_shared.ctl.engine import CREATED, EXITED, RUNNING, Engine, EngineOptions
from kuasar_shared.ctl.exec import exec_sync
from kuasar_shared.ctl.io import parse_cri_line
from kuasar_shared.ctl.plugins import Handler, add_plugin_commands
from kuasar_shared.ctl.metadata import ContainerRecord
from kuasar_shared.errors import InvalidArgument, KuasarError

__all__ = ["main", "build_parser"]

SANDBOXERS = ("runc", "wasm", "quark", "vmm")
DEFAULT_ROOT = "/var/lib/kuasar-ctl"
_SHORT = 13


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kuasar-ctl", description="Drive Kuasar sandboxers like containerd's CRI plugin.")
    p.add_argument("-s", "--sandboxer", choices=SANDBOXERS, default=os.environ.get("KUASAR_SANDBOXER", "runc"),
                   help="sandbox type (default runc)")
    p.add_argument("--endpoint", help="sandboxer socket (default /run/<type>-sandboxer.sock)")
    p.add_argument("--root", default=os.environ.get("KUASAR_CTL_ROOT", DEFAULT_ROOT),
                   help=f"kuasar-ctl metadata directory (default {DEFAULT_ROOT})")
    p.add_argument("--images", default=None, help="directory of rootfs images (default <root>/images)")
    p.add_argument("--io", choices=("fifo", "streaming"), default="fifo", help="stdio of new containers")
    p.add_argument("--debug", action="store_true", help="log every step")
    p.add_argument("-v", "--version", action="version", version=f"kuasar-ctl {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a pod and a container in it")
    run.add_argument("pod_config")
    run.add_argument("container_config")
    runp = sub.add_parser("runp", help="run a pod")
    runp.add_argument("pod_config")
    for p_run in (run, runp):
        p_run.add_argument("--netns", default="", metavar="PATH",
                           help="use this existing network namespace (set up like CNI would; kept on removal)")
    create = sub.add_parser("create", help="create a container in a pod")
    create.add_argument("pod")
    create.add_argument("container_config")
    create.add_argument("pod_config")
    for p_ctr in (run, create):
        p_ctr.add_argument("--announce-tasks", action="store_true",
                           help="announce the container to the sandboxer with Controller.Update (extensions.tasks) "
                                "before its task Create and after its removal, as iSulad does")
    sub.add_parser("start", help="start created containers").add_argument("containers", nargs="+")
    pods = sub.add_parser("pods", help="list pods")
    pods.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ps = sub.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also exited and created containers")
    ps.add_argument("-q", "--quiet", action="store_true", help="only ids")
    ps.add_argument("-p", "--pod", help="only containers of this pod")
    ex = sub.add_parser("exec", help="run a command in a running container")
    ex.add_argument("-i", "--interactive", action="store_true", help="forward stdin")
    ex.add_argument("--timeout", type=float, help="kill the command after this many seconds (exit code 124)")
    ex.add_argument("container")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    logs = sub.add_parser("logs", help="print a container's log")
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("container")
    stop = sub.add_parser("stop", help="stop containers")
    stop.add_argument("-t", "--timeout", type=int, default=0, help="seconds between SIGTERM and SIGKILL")
    stop.add_argument("containers", nargs="+")
    sub.add_parser("rm", help="remove containers (running ones are stopped)").add_argument("containers", nargs="+")
    sub.add_parser("inspect", help="container status as JSON").add_argument("container")
    sub.add_parser("inspectp", help="pod status as JSON").add_argument("pod")
    sub.add_parser("stopp", help="stop pods and their containers").add_argument("pods", nargs="+")
    sub.add_parser("rmp", help="remove pods and their containers").add_argument("pods", nargs="+")
    doctor = sub.add_parser("doctor", help="check this host for each installed sandbox type (ok / warn / fail)")
    doctor.add_argument("--type", dest="types", action="append", choices=SANDBOXERS,
                        help="only this type (repeatable; default: every installed one)")
    add_plugin_commands(sub)
    return p


def _ago(nanos: int) -> str:
    if not nanos:
        return ""
    seconds = max(0, int(time.time() - nanos / 1e9))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n > 1 else ''} ago"
    return f"{seconds} second{'s' if seconds != 1 else ''} ago"


def _rfc3339(nanos: int) -> str:
    if not nanos:
        return ""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(nanos // 10**9)) + ".%09dZ" % (nanos % 10**9)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _pretty_state(state: str) -> str:
    return {"SANDBOX_READY": "Ready", "SANDBOX_NOTREADY": "NotReady", RUNNING: "Running", EXITED: "Exited",
            CREATED: "Created"}.get(state, "Unknown")


async def _pods(engine: Engine, args: argparse.Namespace) -> int:
    rows = [["POD ID", "CREATED", "STATE", "NAME", "NAMESPACE", "ATTEMPT", "RUNTIME"]]
    for pod in engine.store.pods():
        pod, _ = await engine.pod_status(pod.id)
        if args.quiet:
            print(pod.id)
            continue
        rows.append([pod.id[:_SHORT], _ago(pod.created_at), _pretty_state(pod.state), pod.name, pod.namespace,
                     str(pod.attempt), pod.runtime_handler])
    if not args.quiet:
        print(_table(rows))
    return 0


async def _ps(engine: Engine, args: argparse.Namespace) -> int:
    pod_id = engine.store.resolve_pod(args.pod) if args.pod else None
    pod_names = {p.id: p.name for p in engine.store.pods()}
    rows = [["CONTAINER", "IMAGE", "CREATED", "STATE", "NAME", "ATTEMPT", "POD ID", "POD"]]
    for ctr in engine.store.containers(pod_id):
        ctr = await engine.container_status(ctr.id)
        if not args.all and ctr.state != RUNNING:
            continue
        if args.quiet:
            print(ctr.id)
            continue
        rows.append([ctr.id[:_SHORT], ctr.image, _ago(ctr.created_at), _pretty_state(ctr.state), ctr.name,
                     str(ctr.attempt), ctr.pod_id[:_SHORT], pod_names.get(ctr.pod_id, "")])
    if not args.quiet:
        print(_table(rows))
    return 0


def _container_json(engine: Engine, ctr: ContainerRecord) -> dict[str, Any]:
    try:
        with open(os.path.join(engine.store.bundle_dir(ctr.id), "config.json")) as f:
            spec = json.load(f)
    except OSError:
        spec = None
    return {"status": {"id": ctr.id, "metadata": {"name": ctr.name, "attempt": ctr.attempt}, "state": ctr.state,
                       "createdAt": _rfc3339(ctr.created_at), "startedAt": _rfc3339(ctr.started_at),
                       "finishedAt": _rfc3339(ctr.finished_at), "exitCode": ctr.exit_code,
                       "image": {"image": ctr.image}, "imageRef": ctr.image_path, "reason": ctr.reason,
                       "labels": ctr.labels, "annotations": ctr.annotations, "logPath": ctr.log_path},
            "info": {"sandboxID": ctr.pod_id, "pid": ctr.pid, "ioType": ctr.io_type,
                     "stdio": {"stdout": ctr.stdout, "stderr": ctr.stderr},
                     "bundle": engine.store.bundle_dir(ctr.id), "runtimeSpec": spec}}


async def _inspectp(engine: Engine, pod_prefix: str) -> dict[str, Any]:
    pod, status = await engine.pod_status(engine.store.resolve_pod(pod_prefix))
    info: dict[str, Any] = {"pid": status.pid if status else pod.pid, "address": status.address if status else "",
                            "version": status.version if status else 0, "netnsPath": pod.netns_path,
                            "sandboxer": pod.sandboxer, "config": pod.config}
    if status is not None and status.info:
        info["sandboxerInfo"] = dict(status.info)
    return {"status": {"id": pod.id, "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                                                  "attempt": pod.attempt},
                       "state": pod.state, "createdAt": _rfc3339(pod.created_at), "labels": pod.labels,
                       "annotations": pod.annotations, "runtimeHandler": pod.runtime_handler,
                       "containers": [c.id for c in engine.store.containers(pod.id)]},
            "info": info}


def _print_log_lines(data: bytes) -> bytes:
    """Print complete CRI lines from ``data``; return the incomplete tail."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        try:
            _, stream, partial, content = parse_cri_line(line)
        except InvalidArgument:
            continue
        out = sys.stdout if stream == "stdout" else sys.stderr
        out.buffer.write(content + (b"" if partial else b"\n"))
        out.buffer.flush()
    return rest


async def _logs(engine: Engine, args: argparse.Namespace) -> int:
    ctr = engine.store.load_container(engine.store.resolve_container(args.container))
    if not ctr.log_path:
        raise InvalidArgument(f"container {ctr.id[:_SHORT]} has no log file (set log_directory in the pod "
                              "config and log_path in the container config)")
    pending = b""
    with open(ctr.log_path, "rb") if os.path.exists(ctr.log_path) else open(os.devnull, "rb") as f:
        while True:
            pending = _print_log_lines(pending + f.read())
            if not args.follow:
                return 0
            ctr = await engine.container_status(ctr.id)
            if ctr.state != RUNNING:
                await asyncio.sleep(0.3)  # the log writer flushes the last lines after the task exits
                _print_log_lines(pending + f.read())
                return 0
            await asyncio.sleep(0.2)


async def _dispatch(engine: Engine, args: argparse.Namespace) -> int:
    store = engine.store
    cmd = args.command
    plugin: Optional[Handler] = getattr(args, "run", None)
    if plugin is not None:
        return await plugin(engine, args)
    if cmd in ("run", "runp"):
        pod_cfg = config.load_pod_config(args.pod_config)
        ctr_cfg = config.load_container_config(args.container_config) if cmd == "run" else None
        pod_id = await engine.run_pod(pod_cfg, netns=args.netns)
        print(pod_id, flush=True)
        if ctr_cfg is not None:
            try:
                ctr_id = await engine.create_container(pod_id, ctr_cfg, pod_cfg, announce=args.announce_tasks)
                await engine.start_container(ctr_id)
            except BaseException:
                # `run` is one step for the user: do not leave a half-made pod behind
                await asyncio.shield(engine.remove_pod(pod_id))
                raise
            print(ctr_id)
    elif cmd == "create":
        pod_id = store.resolve_pod(args.pod)
        ctr_cfg = config.load_container_config(args.container_config)
        print(await engine.create_container(pod_id, ctr_cfg, config.load_pod_config(args.pod_config),
                                            announce=args.announce_tasks))
    elif cmd == "start":
        for prefix in args.containers:
            ctr_id = store.resolve_container(prefix)
            await engine.start_container(ctr_id)
            print(ctr_id)
    elif cmd == "pods":
        return await _pods(engine, args)
    elif cmd == "ps":
        return await _ps(engine, args)
    elif cmd == "exec":
        argv = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return await exec_sync(engine, store.resolve_container(args.container), argv,
                               stdin=args.interactive, timeout=args.timeout)
    elif cmd == "logs":
        return await _logs(engine, args)
    elif cmd == "stop":
        for prefix in args.containers:
            ctr_id = store.resolve_container(prefix)
            await engine.stop_container(ctr_id, args.timeout)
            print(ctr_id)
    elif cmd == "rm":
        for prefix in args.containers:
            ctr_id = store.resolve_container(prefix)
            await engine.remove_container(ctr_id)
            print(ctr_id)
    elif cmd == "inspect":
        ctr = await engine.container_status(store.resolve_container(args.container))
        print(json.dumps(_container_json(engine, ctr), indent=2))
    elif cmd == "inspectp":
        print(json.dumps(await _inspectp(engine, args.pod), indent=2))
    elif cmd == "stopp":
        for prefix in args.pods:
            pod_id = store.resolve_pod(prefix)
            await engine.stop_pod(pod_id)
            print(f"Stopped sandbox {pod_id}")
    elif cmd == "rmp":
        for prefix in args.pods:
            pod_id = store.resolve_pod(prefix)
            await engine.remove_pod(pod_id)
            print(f"Removed sandbox {pod_id}")
    return 0


def options_from_args(args: argparse.Namespace) -> EngineOptions:
    endpoint = args.endpoint or f"/run/{args.sandboxer}-sandboxer.sock"
    unit = f"kuasar-{args.sandboxer}"
    hint = f" (is {unit} running? try: systemctl status {unit})"
    return EngineOptions(sandboxer=args.sandboxer, endpoint=endpoint, root=args.root,
                         images=args.images or os.path.join(args.root, "images"), io_type=args.io, hint=hint)


async def _amain(args: argparse.Namespace) -> int:
    async with Engine(options_from_args(args)) as engine:
        return await _dispatch(engine, args)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``kuasar-ctl`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="kuasar-ctl: %(levelname)s: %(message)s")
    if args.command == "doctor":  # a host check: no sandboxer connection, no metadata store
        from kuasar_shared.ctl.doctor import run_doctor
        return run_doctor(args.types)
    try:
        return asyncio.run(_amain(args))
    except KuasarError as err:
        print(f"kuasar-ctl: {err.code.name.lower().replace('_', ' ')}: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader of our output went away (`kuasar-ctl ps -q | head -1`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
