"""The shared Sandbox API conformance suite, run against WasmSandboxer through a real gRPC server."""
from __future__ import annotations

import os
import signal

import pytest_asyncio

from kuasar_shared.process_identity import wait_exit
from kuasar_shared.sandbox.task_supervisor import TaskServer
from kuasar_shared.testing.conformance import SandboxerConformance

from kuasar_wasm_sandboxer.sandboxer import WASM_TASK, WasmSandboxer


class TestWasmSandboxerConformance(SandboxerConformance):
    sandboxer_name = "wasm"

    @pytest_asyncio.fixture
    async def sandboxer(self, tmp_path):
        directory = str(tmp_path / "wasm")
        os.makedirs(directory)
        server = await TaskServer.ensure(directory, WASM_TASK)
        yield WasmSandboxer(directory, server)
        await server.close()
        os.kill(server.pid, signal.SIGTERM)
        await wait_exit(server.pid)
