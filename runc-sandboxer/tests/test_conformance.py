"""The shared Sandbox API conformance suite, run against RuncSandboxer through a real gRPC server."""
from __future__ import annotations

import pytest_asyncio

from kuasar_shared.testing.conformance import SandboxerConformance
from kuasar_runc_sandboxer.sandboxer import RuncSandboxer


class TestRuncSandboxerConformance(SandboxerConformance):
    sandboxer_name = "runc"

    @pytest_asyncio.fixture
    async def sandboxer(self, holders, task_server) -> RuncSandboxer:
        return RuncSandboxer(task_server.directory, holders, task_server)
