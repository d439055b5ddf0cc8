"""The first task server made from a zygote forked before the loop (kuasar_shared.sandbox.zygote), with the toy
task server of tests/task as the program: it must look like a spawned server to everything that finds it, share
the parent's interpreter pages, and be the only one: restarts spawn the installed command."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from typing import Iterator

import pytest

from kuasar_shared.process_identity import start_time, wait_exit
from kuasar_shared.sandbox.task_supervisor import TaskProgram, TaskServer, fork_first_task_server, fork_task_zygote
from kuasar_shared.sandbox.zygote import TaskZygote

TASK_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "task")
TOY_TASK = [sys.executable, os.path.join(TASK_DIR, "toy_task_server.py")]
MiB = 1024 * 1024


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def zygote(tmp_path) -> Iterator[TaskZygote]:
    """A zygote of the toy task server, forked here (a sync fixture: no loop runs yet)."""
    sys.path.insert(0, TASK_DIR)
    try:
        made = TaskZygote.fork(TOY_TASK, "toy_task_server", "toy-task")
    finally:
        sys.path.remove(TASK_DIR)
    yield made
    made.close()
    _kill(made.pid)


def _fd_targets(pid: int) -> dict[int, str]:
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            pass
    return found


def _rollup(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.endswith("kB\n")}


@pytest.mark.asyncio
async def test_first_server_is_the_zygote_and_a_restart_spawns_the_command(tmp_path, zygote) -> None:
    log_file = str(tmp_path / "toy.log")
    # a file of ours the server must not inherit
    ours = os.open(str(tmp_path / "ours"), os.O_WRONLY | os.O_CREAT, 0o600)
    with pytest.raises(ValueError, match="not the zygote's program"):
        zygote.start(["/usr/bin/other-task", "--listen", "x"], None)
    server = await TaskServer.ensure(str(tmp_path), TOY_TASK, log_file=log_file, front=True, zygote=zygote)
    try:
        assert server.pid == zygote.pid and await server.ping()
        with open(os.path.join(str(tmp_path), "task-server.json")) as f:
            record = json.load(f)
        assert (record["pid"], record["start_time"]) == (server.pid, start_time(server.pid))
        with open(f"/proc/{server.pid}/comm") as f:
            assert f.read().strip() == "toy-task"
        assert os.getsid(server.pid) == server.pid
        fds = _fd_targets(server.pid)
        assert fds[0] == os.devnull and fds[1] == fds[2] == log_file
        assert all(not target.startswith(str(tmp_path)) or target == log_file for target in fds.values()), fds
        assert str(tmp_path / "ours") not in fds.values()
        own_sockets = {t for t in _fd_targets(os.getpid()).values() if t.startswith("socket:")}
        assert not own_sockets & {t for t in fds.values() if t.startswith("socket:")}
        assert os.readlink(f"/proc/{server.pid}/cwd") == os.getcwd()
        # the interpreter pages it did not touch are still ours too (a spawned server shares none dirty)
        assert _rollup(server.pid)["Shared_Dirty"] > 2 * MiB
        with pytest.raises(OSError, match="already used"):
            zygote.start(TOY_TASK, None)

        first = server.pid
        server.supervise()
        os.kill(first, signal.SIGKILL)
        for _ in range(200):
            if server.pid != first and await server.ping():
                break
            await asyncio.sleep(0.05)
        assert server.pid != first
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[:2] == [a.encode() for a in TOY_TASK]
    finally:
        os.close(ours)
        await server.close()
        _kill(server.pid)
        _kill(server.front_pid)
    await asyncio.wait_for(wait_exit(server.pid), 10)


def test_an_unused_zygote_exits(zygote) -> None:
    zygote.close()
    assert os.waitpid(zygote.pid, 0)[1] == 0
    assert zygote.fileno() == -1


@pytest.mark.asyncio
async def test_a_dead_zygote_leaves_the_command_to_spawn(tmp_path) -> None:
    gone = os.fork()
    if gone == 0:
        os._exit(0)
    os.waitpid(gone, 0)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    theirs.close()
    server = await TaskServer.ensure(str(tmp_path), TOY_TASK, zygote=TaskZygote(gone, ours, TOY_TASK))
    try:
        assert server.pid != gone and await server.ping()
        with open(f"/proc/{server.pid}/cmdline", "rb") as f:
            assert f.read().split(b"\0")[:2] == [a.encode() for a in TOY_TASK]
    finally:
        await server.close()
        _kill(server.pid)
    await asyncio.wait_for(wait_exit(server.pid), 10)


def test_no_zygote_while_a_recorded_server_runs_or_for_another_installation(tmp_path) -> None:
    ours = [sys.executable, "-m", "toy_task_server"]
    with open(tmp_path / "task-server.json", "w") as f:
        json.dump({"pid": os.getpid(), "start_time": start_time(os.getpid()), "socket": "x"}, f)
    assert fork_task_zygote(str(tmp_path), ours, "toy_task_server", "toy-task") is None
    os.unlink(tmp_path / "task-server.json")
    # a program found on PATH, not beside our interpreter, may be other code than the module we would import
    assert fork_task_zygote(str(tmp_path), ["/opt/elsewhere/bin/toy-task"], "toy_task_server", "toy-task") is None
    # ours but not importable: spawned
    assert fork_task_zygote(str(tmp_path), [sys.executable, "-m", "no_such_task_program"], "no_such_task_program",
                            "toy-task") is None


def test_a_sandboxers_first_server_is_forked_only_without_daemon(tmp_path) -> None:
    """--daemon's double fork would put the zygote outside the sandboxer's subreaping: spawned then."""
    program = TaskProgram.find("no-such-toy-task", "toy_task_server")
    assert program.command == (sys.executable, "-m", "toy_task_server")
    assert fork_first_task_server(argparse.Namespace(dir=str(tmp_path), daemon=True), program) is None
    sys.path.insert(0, TASK_DIR)
    try:
        made = fork_first_task_server(argparse.Namespace(dir=str(tmp_path), daemon=False), program)
    finally:
        sys.path.remove(TASK_DIR)
    assert made is not None and made.command == list(program.command)
    made.close()
    assert os.waitpid(made.pid, 0)[1] == 0
