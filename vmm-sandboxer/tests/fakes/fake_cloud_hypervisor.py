"""A stand-in for ``cloud-hypervisor`` with the command line CloudHypervisorVM builds, checked the way
Cloud Hypervisor refuses one (``--kernel`` must exist, ``--fs`` needs ``--memory ...,shared=on`` and an
existing vhost-user socket, ``--vsock`` needs ``cid`` >= 3 and ``socket``), then serving the REST API on
``--api-socket`` (``GET vmm.ping``, ``GET vm.info``, ``PUT vm.shutdown``, ``PUT vmm.shutdown``; other
endpoints 404, wrong methods 405) and the guest agent (vmm-task's SandboxService) behind the hybrid vsock
socket (``CONNECT 1024``)."""
from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any, Callable, Dict, List, Tuple

from fake_guest import VSOCK_AGENT_PORT, build_server, fail, serve_hybrid_vsock
from fake_vmm import finisher, parse_options, serve_until_done

PROGRAM = "cloud-hypervisor"
VALUE_OPTIONS = {"--api-socket", "--cpus", "--memory", "--kernel", "--cmdline", "--initramfs", "--pmem", "--rng",
                 "--vsock", "--console", "--serial", "--fs", "--net", "--log-file", "--disk"}
FLAGS = {"-v", "-vv", "-vvv"}
MULTI = {"--pmem", "--fs", "--net", "--disk"}


def kv(value: str) -> Dict[str, str]:
    return dict(part.partition("=")[::2] for part in value.split(","))


def parse(argv: List[str]) -> Dict[str, List[str]]:
    unexpected = "error: unexpected argument '%s' found"
    options = parse_options(PROGRAM, argv, VALUE_OPTIONS, FLAGS, unexpected, unexpected)
    for opt, values in options.items():
        if len(values) > 1 and opt not in MULTI | FLAGS:
            fail(PROGRAM, "error: the argument '%s' cannot be used multiple times" % opt)
    return options


def check(options: Dict[str, List[str]]) -> Dict[str, Any]:
    for required in ("--api-socket", "--kernel", "--cpus", "--memory", "--vsock"):
        if required not in options:
            fail(PROGRAM, "%s missing (CloudHypervisorVM always passes it)" % required)
    for path in options["--kernel"] + options.get("--initramfs", []):
        if not os.path.exists(path):
            fail(PROGRAM, "Error booting VM: cannot open %s" % path)
    cpus, memory, vsock = kv(options["--cpus"][0]), kv(options["--memory"][0]), kv(options["--vsock"][0])
    if not cpus.get("boot", "").isdigit():
        fail(PROGRAM, "--cpus %s: expected boot=N" % options["--cpus"][0])
    if not memory.get("size", "").isdigit():
        fail(PROGRAM, "--memory %s: expected size=<bytes>" % options["--memory"][0])
    if not vsock.get("cid", "").isdigit() or int(vsock["cid"]) < 3 or not vsock.get("socket"):
        fail(PROGRAM, "--vsock %s: expected cid=N (N >= 3),socket=PATH" % options["--vsock"][0])
    for fs in map(kv, options.get("--fs", [])):
        if memory.get("shared") != "on":
            fail(PROGRAM, "Error booting VM: vhost-user-fs requires shared memory (--memory shared=on)")
        if not os.path.exists(fs.get("socket", "")):
            fail(PROGRAM, "Error booting VM: cannot connect to vhost-user socket %s" % fs.get("socket"))
    for pmem in map(kv, options.get("--pmem", [])):
        if not os.path.exists(pmem.get("file", "")):
            fail(PROGRAM, "Error booting VM: cannot open pmem file %s" % pmem.get("file"))
    return {"api": options["--api-socket"][0], "vsock": vsock["socket"], "vcpus": int(cpus["boot"]),
            "memory": int(memory["size"]), "console": kv(options.get("--console", ["off"])[0]).get("file", "")}


Handler = Callable[[], Tuple[int, Any]]


async def run(plan: Dict[str, Any]) -> int:
    loop = asyncio.get_running_loop()
    done: "asyncio.Future[int]" = loop.create_future()
    state = {"vm": "Running"}

    def shutdown_vm() -> Tuple[int, Any]:
        state["vm"] = "Shutdown"
        return 204, None

    def shutdown_vmm() -> Tuple[int, Any]:
        loop.call_later(0.05, finisher(done))
        return 204, None

    routes: Dict[Tuple[str, str], Handler] = {
        ("GET", "vmm.ping"): lambda: (200, {"build_version": "v38.0-fake", "version": "38.0.0", "pid": os.getpid(),
                                            "features": []}),
        ("GET", "vm.info"): lambda: (200, {"state": state["vm"], "memory_actual_size": plan["memory"],
                                           "config": {"cpus": {"boot_vcpus": plan["vcpus"]}}}),
        ("PUT", "vm.shutdown"): shutdown_vm,
        ("PUT", "vmm.shutdown"): shutdown_vmm,
    }

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode().split()
            length = 0
            while True:
                line = (await reader.readline()).decode().strip()
                if not line:
                    break
                name, _, value = line.partition(":")
                if name.lower() == "content-length":
                    length = int(value)
            if length:
                json.loads(await reader.readexactly(length))
            method, path = request[0], request[1]
            print("API %s %s" % (method, path), file=sys.stderr, flush=True)  # the request sequence, for tests
            endpoint = path[len("/api/v1/"):] if path.startswith("/api/v1/") else ""
            if (method, endpoint) in routes:
                status, body = routes[(method, endpoint)]()
            elif any(e == endpoint for _, e in routes):
                status, body = 405, None
            else:
                status, body = 404, None
            payload = json.dumps(body).encode() if body is not None else b""
            reason = {200: "OK", 204: "No Content", 404: "Not Found", 405: "Method Not Allowed"}[status]
            writer.write(b"HTTP/1.1 %d %s\r\nServer: Cloud Hypervisor API\r\nConnection: close\r\n"
                         b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                         % (status, reason.encode(), len(payload), payload))
            await writer.drain()
        except (ConnectionError, IndexError, ValueError):
            pass
        finally:
            writer.close()

    if plan["console"]:
        with open(plan["console"], "a") as console:
            console.write("fake cloud-hypervisor: guest agent on vsock port %d\n" % VSOCK_AGENT_PORT)
    servers = [await serve_hybrid_vsock(plan["vsock"], build_server()),
               await asyncio.start_unix_server(http, plan["api"])]
    return await serve_until_done(done, servers)


def main() -> int:
    return asyncio.run(run(check(parse(sys.argv[1:]))))


if __name__ == "__main__":
    sys.exit(main())
