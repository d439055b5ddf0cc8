"""A real runc-sandboxer's first runc-task is a fork of it (kuasar_shared.sandbox.zygote, issue 19): it shares the
sandboxer's interpreter pages, yet looks like a spawned server to everything that finds it; a restarted one is
the installed ``runc-task`` command (so it runs upgraded code)."""
from __future__ import annotations

import json
import os
import signal

from support import wait_for


def _record(state: str) -> dict:
    with open(os.path.join(state, "task-server.json")) as f:
        return json.load(f)


def _stat(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def _sockets(pid: int) -> set[str]:
    found = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        if target.startswith("socket:"):
            found.add(target)
    return found


def test_first_task_server_is_forked_and_a_restart_is_spawned(runc_sandboxer) -> None:
    _listen, state = runc_sandboxer
    pid = _record(state)["pid"]
    sandboxer = int(_stat(pid)[1])
    with open(f"/proc/{sandboxer}/comm") as f:
        assert f.read().strip() == "runc-sandboxer"
    with open(f"/proc/{pid}/comm") as f:
        assert f.read().strip() == "runc-task"
    assert os.getsid(pid) == pid
    assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
    fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert all(t.startswith(("socket:", "anon_inode:", "pipe:")) for fd, t in fds.items() if fd > 2), fds
    assert not _sockets(pid) & _sockets(sandboxer)
    with open(f"/proc/{pid}/smaps_rollup") as f:
        shared_dirty_kb = next(int(line.split()[1]) for line in f if line.startswith("Shared_Dirty:"))
    assert shared_dirty_kb > 2048

    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: _record(state)["pid"] != pid, 20)
    new = _record(state)["pid"]
    with open(f"/proc/{new}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert any(a.endswith(b"runc-task") or a == b"kuasar_runc_task.main" for a in argv[:3]), argv
    assert int(_stat(new)[1]) == sandboxer and os.getsid(new) == new
