"""ChClient: the requests it writes and how it reads Cloud Hypervisor's answers (status, Content-Length
body, empty 204), against a scripted HTTP server on a unix socket."""
from __future__ import annotations

import asyncio
import os

import pytest

from kuasar_shared.errors import Internal, Unavailable
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.client import ChClient


async def _serve(path: str, answer: bytes, seen: list) -> asyncio.AbstractServer:
    async def handle(reader, writer):
        head = []
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            head.append(line.decode().strip())
        length = next((int(h.split(":")[1]) for h in head if h.lower().startswith("content-length")), 0)
        seen.append((head, await reader.readexactly(length)))
        writer.write(answer)
        await writer.drain()
        writer.close()
    return await asyncio.start_unix_server(handle, path)


async def test_get_with_json_answer(short_tmp):
    path, seen = os.path.join(short_tmp, "api.sock"), []
    server = await _serve(path, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n"
                                b'{"version":"38.0.0"}', seen)
    try:
        assert await ChClient(path).request("GET", "vmm.ping") == {"version": "38.0.0"}
    finally:
        server.close()
    head, body = seen[0]
    assert head[0] == "GET /api/v1/vmm.ping HTTP/1.1" and "Content-Length: 0" in head and body == b""


async def test_put_with_body_and_empty_answer(short_tmp):
    path, seen = os.path.join(short_tmp, "api.sock"), []
    server = await _serve(path, b"HTTP/1.1 204 No Content\r\n\r\n", seen)
    try:
        assert await ChClient(path).request("PUT", "vm.remove-device", {"id": "fs"}) is None
    finally:
        server.close()
    head, body = seen[0]
    assert head[0] == "PUT /api/v1/vm.remove-device HTTP/1.1" and body == b'{"id": "fs"}'
    assert "Content-Type: application/json" in head


async def test_refusal_and_absence(short_tmp):
    path = os.path.join(short_tmp, "api.sock")
    server = await _serve(path, b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nVmNotBoot", [])
    try:
        with pytest.raises(Internal, match="HTTP 500 VmNotBoot"):
            await ChClient(path).request("PUT", "vm.shutdown")
    finally:
        server.close()
    with pytest.raises(Unavailable):
        await ChClient(os.path.join(short_tmp, "missing.sock")).request("GET", "vmm.ping")
