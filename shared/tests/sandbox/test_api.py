"""Tests of kuasar_shared.sandbox.api: request accessors and the Sandboxer defaults."""
from __future__ import annotations

from typing import Optional

import pytest

from kuasar_shared.errors import NotFound, Unimplemented
from kuasar_shared.sandbox.api import (CreateSandbox, ExitStatus, Sandboxer, SandboxStatus, TaskDiff,
                                       TaskResources)


class MinimalSandboxer(Sandboxer):
    """Implements only the abstract methods, to exercise the defaults."""

    def __init__(self) -> None:
        self.known = {"p"}

    async def create(self, req: CreateSandbox) -> None:
        self.known.add(req.id)

    async def start(self, id: str) -> SandboxStatus:
        return await self.status(id)

    async def stop(self, id: str, timeout_secs: Optional[int]) -> None:
        await self.status(id)

    async def wait(self, id: str) -> ExitStatus:
        return ExitStatus(0, None)

    async def status(self, id: str, verbose: bool = False) -> SandboxStatus:
        if id not in self.known:
            raise NotFound("sandbox %s not found" % id)
        return SandboxStatus(id=id, ready=True)

    async def shutdown(self, id: str) -> None:
        self.known.discard(id)


@pytest.mark.parametrize("config,network,shared,host_pid", [
    ({}, False, True, False),
    ({"linux": {"security_context": {"namespace_options": {"network": "NODE"}}}}, True, True, False),
    ({"linux": {"security_context": {"namespace_options": {"pid": "CONTAINER"}}}}, False, False, False),
    ({"linux": {"security_context": {"namespace_options": {"pid": "NODE"}}}}, False, False, True),
])
def test_namespace_modes(config: dict, network: bool, shared: bool, host_pid: bool) -> None:
    req = CreateSandbox(id="p", config=config)
    assert (req.host_network, req.shared_pid, req.host_pid) == (network, shared, host_pid)


def test_config_accessors() -> None:
    req = CreateSandbox(id="p", config={"hostname": "h", "linux": {"cgroup_parent": "/k/p"}})
    assert (req.hostname, req.cgroup_parent) == ("h", "/k/p")
    assert (CreateSandbox(id="p").hostname, CreateSandbox(id="p").cgroup_parent) == ("", "")


def test_status_defaults() -> None:
    status = SandboxStatus(id="p", ready=False)
    assert status.version == 3 and status.tasks == TaskResources() and status.info == {}


@pytest.mark.asyncio
async def test_sandboxer_defaults() -> None:
    sandboxer = MinimalSandboxer()
    assert await sandboxer.metrics("p") is None
    with pytest.raises(NotFound):
        await sandboxer.metrics("other")
    with pytest.raises(Unimplemented, match="sandbox p"):
        await sandboxer.update_tasks("p", TaskDiff(old=TaskResources(), new=TaskResources()))
    await sandboxer.recover()
    await sandboxer.close()
