"""A stand-in for ``qemu-system-x86_64`` with the command line QemuVM builds: checks it the way QEMU
would refuse it, then serves QMP on ``-qmp`` and the guest agent (vmm-task's SandboxService) on the
``kuasar.agent`` virtserialport's chardev (mute with ``fake.silent_agent`` in ``-append``).
``system_powerdown`` and ``quit`` end it (status 0), as does SIGTERM; ``query-cpus-fast`` lists one vCPU
per ``-smp`` (its own pid as the thread)."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Dict, List

from fake_guest import SILENT, build_server, fail, serve_serial_port
from fake_qmp import query_status, serve_qmp
from fake_vmm import finisher, parse_options, serve_until_done

PROGRAM = "qemu-system-x86_64"
VALUE_OPTIONS = {"-name", "-cpu", "-smp", "-m", "-kernel", "-initrd", "-bios", "-append", "-qmp", "-serial",
                 "-machine", "-accel", "-object", "-device", "-chardev", "-fsdev", "-drive", "-netdev"}
FLAGS = {"-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-mem-prealloc"}


def props(value: str) -> Dict[str, str]:
    """``driver,key=value,...`` as a dict with the head under ``""`` (``,,`` is an escaped comma)."""
    parts = value.replace(",,", "\0").split(",")
    out = {"": parts[0].replace("\0", ",")}
    for part in parts[1:]:
        key, _, val = part.partition("=")
        out[key] = val.replace("\0", ",")
    return out


def parse(argv: List[str]) -> Dict[str, List[str]]:
    return parse_options(PROGRAM, argv, VALUE_OPTIONS, FLAGS, "%s: invalid option", "%s: requires an argument")


def check(options: Dict[str, List[str]]) -> Dict[str, Any]:
    """What the fake serves, from the options. Exits 1 on what QEMU would refuse."""
    for required in ("-kernel", "-qmp", "-m", "-smp"):
        if required not in options:
            fail(PROGRAM, "%s missing (QemuVM always passes it)" % required)
    for path in options["-kernel"] + options.get("-initrd", []):
        if not os.path.exists(path):
            fail(PROGRAM, "could not open '%s': No such file or directory" % path)
    qmp = options["-qmp"][0]
    if not (qmp.startswith("unix:") and qmp.endswith(",server=on,wait=off")):
        fail(PROGRAM, "-qmp %s: expected unix:PATH,server=on,wait=off" % qmp)
    chardevs = {p["id"]: p for p in map(props, options.get("-chardev", []))}
    ports = [p for p in map(props, options.get("-device", [])) if p[""] == "virtserialport"]
    agent = [p for p in ports if p.get("name") == "kuasar.agent"]
    if len(agent) != 1 or agent[0].get("chardev") not in chardevs:
        fail(PROGRAM, "no virtserialport named kuasar.agent on a chardev (the guest agent has no channel)")
    chardev = chardevs[agent[0]["chardev"]]
    if chardev[""] != "socket" or chardev.get("server") != "on" or chardev.get("wait") != "off":
        fail(PROGRAM, "-chardev %s: the agent chardev must be socket,server=on,wait=off" % chardev["id"])
    serial = options.get("-serial", ["file:/dev/null"])[0]
    return {"qmp": qmp[len("unix:"):-len(",server=on,wait=off")], "agent": chardev["path"],
            "silent": SILENT in options.get("-append", [""])[0].split(),
            "vcpus": int(options["-smp"][0].split(",")[0]), "console": serial.partition("file:")[2]}


async def run(plan: Dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    done: "asyncio.Future[int]" = loop.create_future()

    def powerdown(_: Dict[str, Any]) -> Dict[str, Any]:
        loop.call_later(0.05, finisher(done))
        return {}

    commands = {
        "query-status": query_status,
        "query-cpus-fast": lambda _: [{"cpu-index": i, "thread-id": os.getpid(), "target": "x86_64"}
                                      for i in range(plan["vcpus"])],
        "system_powerdown": powerdown,
        "quit": powerdown,
    }
    if plan["console"]:
        with open(plan["console"], "a") as console:
            console.write("fake QEMU: guest agent on %s\n" % plan["agent"])
    servers = [await serve_serial_port(plan["agent"], build_server(), plan["silent"]),
               await serve_qmp(plan["qmp"], {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "fake"},
                               commands)]
    return await serve_until_done(done, servers)


def main() -> int:
    return asyncio.run(run(check(parse(sys.argv[1:]))))


if __name__ == "__main__":
    sys.exit(main())
