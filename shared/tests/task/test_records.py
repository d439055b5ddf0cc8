"""Container records: JSON round trip and the on-disk store."""
from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest

from kuasar_shared.errors import NotFound
from kuasar_shared.values import TaskStatus
from kuasar_shared.task.records import Container, ContainerStore, Proc


@pytest.mark.asyncio
async def test_record_roundtrip_and_exit_future(tmp_path) -> None:
    container = Container(id="c1", bundle="/b", namespace="k8s.io", sandbox_id="p1", root="/r", rootfs="/b/rootfs",
                          mounted=1, global_args=("--platform=ptrace",))
    container.init = Proc(exec_id="", pid=10, start_time=123, status=TaskStatus.RUNNING,
                          stdio={"stdin": "", "stdout": "/o", "stderr": ""})
    container.execs["e1"] = Proc(exec_id="e1", spec={"args": ["true"]}, runtime_pid=7)
    waiter = asyncio.ensure_future(asyncio.shield(container.init.future()))
    await asyncio.sleep(0)
    assert not waiter.done()
    container.init.exited(137, datetime(2026, 1, 1, tzinfo=timezone.utc))
    await asyncio.wait_for(waiter, 1)

    store = ContainerStore(str(tmp_path), Container)
    store.save(container)
    store.work_dir("c1")
    loaded = store.load(store.paths()[0])
    assert loaded.to_json() == container.to_json()
    assert loaded.init.status is TaskStatus.STOPPED and loaded.init.exit_info().exit_status == 137
    assert loaded.init.future().done()
    assert loaded.state("").stdio.stdout == "/o"
    with pytest.raises(NotFound):
        loaded.proc("missing")
    store.remove("c1")
    assert store.paths() == []
