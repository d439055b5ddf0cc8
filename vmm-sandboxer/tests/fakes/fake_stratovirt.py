"""A stand-in for ``stratovirt`` with the command line StratoVirtVM builds, checked against the syntax
upstream Kuasar's ``stratovirt/`` produces and StratoVirt's config guidebook documents (bare
``server,nowait``, ``-smp cpus=N``, PCI devices on ``pcie.0`` with distinct explicit ``addr``, ``mem-share=on``
for vhost-user-fs, virtconsole/virtserialport taking only ``id``, ``chardev`` and ``nr`` with ``nr=0`` for a
console only, one port on microvm): it writes ``-pidfile``, serves QMP (StratoVirt's greeting;
``query-status``, ``query-cpus``, ``quit``), the vhost-user-fs socket (StratoVirt is its server) and
vmm-task's SandboxService on the virtserialport ``nr=1`` (the guest agent's unnamed port)."""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Dict, List

from fake_guest import build_server, fail, serve_serial_port
from fake_qemu import props
from fake_qmp import query_status, serve_qmp
from fake_vmm import finisher, parse_options, serve_until_done

PROGRAM = "stratovirt"
VALUE_OPTIONS = {"-name", "-uuid", "-machine", "-qmp", "-kernel", "-initrd", "-append", "-smp", "-m", "-pidfile",
                 "-D", "-global", "-object", "-device", "-chardev", "-drive", "-netdev", "-serial"}
PORT_PROPERTIES = {"", "id", "chardev", "nr"}
FLAGS = {"-daemonize", "-disable-seccomp", "-mem-prealloc"}


def parse(argv: List[str]) -> Dict[str, List[str]]:
    return parse_options(PROGRAM, argv, VALUE_OPTIONS, FLAGS, "Invalid argument: %s", "Invalid argument: %s")


def socket_chardev(chardev: Dict[str, str]) -> str:
    if chardev[""] != "socket" or "server" not in chardev or "nowait" not in chardev or chardev["server"] or \
            chardev["nowait"]:
        fail(PROGRAM, "-chardev %s: expected socket,id=..,path=..,server,nowait" % chardev.get("id"))
    return chardev["path"]


def check(options: Dict[str, List[str]]) -> Dict[str, Any]:
    for required in ("-machine", "-kernel", "-qmp", "-smp", "-m", "-pidfile"):
        if required not in options:
            fail(PROGRAM, "%s missing (StratoVirtVM always passes it)" % required)
    if "-daemonize" in options:
        fail(PROGRAM, "this fake runs in the foreground; StratoVirtVM does not daemonize")
    for path in options["-kernel"] + options.get("-initrd", []):
        if not os.path.exists(path):
            fail(PROGRAM, "Failed to open file %s" % path)
    qmp = options["-qmp"][0]
    if not (qmp.startswith("unix:") and qmp.endswith(",server,nowait")):
        fail(PROGRAM, "-qmp %s: expected unix:PATH,server,nowait" % qmp)
    smp = options["-smp"][0]
    if not smp.startswith("cpus=") or not smp[5:].isdigit():
        fail(PROGRAM, "-smp %s: expected cpus=N" % smp)
    machine = options["-machine"][0].split(",")
    chardevs = {p["id"]: p for p in map(props, options.get("-chardev", []))}
    devices = list(map(props, options.get("-device", [])))
    addrs = [d["addr"] for d in devices if d[""].endswith("-pci")]
    if machine[0] != "microvm":
        for d in devices:
            if d[""].endswith("-pci") and (d.get("bus") != "pcie.0" or not d.get("addr")):
                fail(PROGRAM, "-device %s: a PCI device needs bus=pcie.0 and addr" % d[""])
        if len(set(addrs)) != len(addrs) or "0x0" in addrs:
            fail(PROGRAM, "PCI addresses must be distinct and not 0x0 (reserved): %s" % addrs)
    drivers = {d[""] for d in devices}
    ports = [d for d in devices if d[""] in ("virtconsole", "virtserialport")]
    if ports and not drivers & {"virtio-serial-pci", "virtio-serial-device"}:
        fail(PROGRAM, "virtconsole/virtserialport without a virtio-serial bus")
    for port in ports:
        if set(port) - PORT_PROPERTIES:
            fail(PROGRAM, "-device %s: invalid parameter %s" % (port[""], sorted(set(port) - PORT_PROPERTIES)))
        if port.get("nr") == "0" and port[""] != "virtconsole":
            fail(PROGRAM, "-device virtserialport: nr=0 is only allowed for virtconsole")
        if port.get("chardev") not in chardevs:
            fail(PROGRAM, "-device %s: chardev %s not found" % (port[""], port.get("chardev")))
    if len({p.get("nr") for p in ports}) != len(ports):
        fail(PROGRAM, "virtio-serial port numbers must be distinct")
    if machine[0] == "microvm" and len(ports) > 1:
        fail(PROGRAM, "only one virtio-serial port is supported in microvm")
    fs = [d for d in devices if d[""].startswith("vhost-user-fs")]
    if fs and "mem-share=on" not in machine:
        fail(PROGRAM, "vhost-user-fs needs -machine ...,mem-share=on")
    agent = [d for d in ports if d[""] == "virtserialport" and d.get("nr") == "1"]
    if len(agent) != 1:
        fail(PROGRAM, "no virtserialport nr=1 (the guest agent's port): the guest would not find its channel")
    return {"qmp": qmp[len("unix:"):-len(",server,nowait")], "pidfile": options["-pidfile"][0],
            "agent": socket_chardev(chardevs[agent[0]["chardev"]]), "vcpus": int(smp[5:]),
            "fs": [socket_chardev(chardevs[d["chardev"]]) for d in fs]}


async def run(plan: Dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    done: "asyncio.Future[int]" = loop.create_future()

    def quit_soon(_: Dict[str, Any]) -> Dict[str, Any]:
        loop.call_later(0.05, finisher(done))
        return {}

    commands = {
        "query-status": query_status,
        "query-cpus": lambda _: [{"CPU": i, "current": i == 0, "halted": False, "arch": "x86",
                                  "qom_path": "/machine/unattached/device[%d]" % i, "thread_id": os.getpid()}
                                 for i in range(plan["vcpus"])],
        "quit": quit_soon,
    }
    with open(plan["pidfile"], "w") as f:
        f.write("%d\n" % os.getpid())
    servers = [await serve_serial_port(plan["agent"], build_server())]
    for path in plan["fs"]:
        servers.append(await asyncio.start_unix_server(lambda r, w: None, path))
    servers.append(await serve_qmp(plan["qmp"], {"StratoVirt": {"micro": 0, "minor": 4, "major": 2},
                                                 "package": ""}, commands))
    return await serve_until_done(done, servers)


def main() -> int:
    return asyncio.run(run(check(parse(sys.argv[1:]))))


if __name__ == "__main__":
    sys.exit(main())
