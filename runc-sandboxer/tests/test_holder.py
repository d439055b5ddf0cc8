"""The [sandbox-parent] helper (native/sandbox_parent.c) and the namespace holders it forks: through
HolderParent as the sandboxer uses it, and as a program through its real interface: its command line, raw
requests on its socket (malformed fields, bad sysctl paths, a missing netns, each answered with an error
naming what was wrong while the helper keeps serving), its exit on EOF, what it and its spare cost, and
``kuasar-ctl doctor`` finding it."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from typing import Iterator

import pytest

from kuasar_shared.doctor import Sandboxer, Status
from kuasar_shared.errors import InvalidArgument
from kuasar_shared.native import decode, encode
from kuasar_shared.pause import pause_elf
from kuasar_shared.process_identity import start_time, wait_exit

from kuasar_runc_sandboxer.doctor import checks
from kuasar_runc_sandboxer.holder import MAX_MESSAGE, NAME, executable


@pytest.mark.asyncio
async def test_holder_owns_new_ipc_uts_pid_namespaces_with_hostname(holders) -> None:
    pid = await holders.spawn("holder-test", "", "holder-host")
    try:
        for ns in ("ipc", "uts", "pid"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") != os.readlink(f"/proc/self/ns/{ns}")
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        hostname = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True,
                                  check=True).stdout.strip()
        assert hostname == "holder-host"
        with open(f"/proc/{pid}/status") as handle:
            nspid = [line.split() for line in handle if line.startswith("NSpid:")][0]
        assert nspid[-1] == "1"  # PID 1 of its own PID namespace
        os.kill(pid, signal.SIGTERM)  # ignored from outside the namespace
        await asyncio.sleep(0.1)
        assert start_time(pid) is not None
    finally:
        os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(pid), 5)


@pytest.mark.asyncio
async def test_bad_netns_is_reported_and_helper_keeps_serving(holders, tmp_path) -> None:
    with pytest.raises(InvalidArgument, match="No such file"):
        await holders.spawn("holder-bad", str(tmp_path / "missing"), "")
    pid = await holders.spawn("holder-ok", "", "")
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(wait_exit(pid), 5)


@pytest.mark.asyncio
async def test_holders_are_made_ahead_of_need_and_a_dead_spare_is_replaced(holders) -> None:
    pid = await holders.spawn("holder-first", "", "first")
    await asyncio.sleep(0.2)
    spares = _spare_holders(holders.pid)
    assert len(spares) == 1
    os.kill(spares[0], signal.SIGKILL)
    await asyncio.sleep(0.1)
    second = await holders.spawn("holder-second", "", "second")
    host_ipc = await holders.spawn("holder-host-ipc", "", "third", host_ipc=True)
    try:
        assert second != spares[0]
        assert os.readlink(f"/proc/{host_ipc}/ns/ipc") == os.readlink("/proc/self/ns/ipc")
        for holder in (pid, second):
            assert os.readlink(f"/proc/{holder}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
            with open(f"/proc/{holder}/cmdline", "rb") as handle:
                assert handle.read().startswith(b"[sandbox-holder-")  # the pause program runs
        await asyncio.sleep(0.2)
        assert len(_spare_holders(holders.pid)) == 1
    finally:
        for holder in (pid, second, host_ipc):
            os.kill(holder, signal.SIGKILL)
        for holder in (pid, second, host_ipc):
            await asyncio.wait_for(wait_exit(holder), 5)


class Helper:
    """A sandbox-parent started by the test, with the test's end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock

    def ask(self, message: bytes) -> dict[str, str]:
        self.sock.send(message)
        return dict(decode(self.sock.recv(MAX_MESSAGE)))

    def error(self, message: bytes) -> str:
        answer = self.ask(message)
        assert "error" in answer, answer
        return answer["error"]


@pytest.fixture
def helper() -> Iterator[Helper]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.settimeout(10)
    pause = os.memfd_create("sandbox-pause", 0)
    os.write(pause, pause_elf())
    proc = subprocess.Popen([executable(), "--control", str(theirs.fileno()), "--pause", str(pause)],
                            pass_fds=(theirs.fileno(), pause), stderr=subprocess.PIPE)
    theirs.close()
    os.close(pause)
    try:
        yield Helper(proc, ours)
    finally:
        ours.close()
        try:
            proc.wait(5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stderr is not None
            proc.stderr.close()


def _request(**fields: str) -> bytes:
    return encode([("id", "sp-test"), *fields.items()])


def _children_named(parent: int, name: str, pid_1: bool = False) -> list[int]:
    """``parent``'s children whose comm is ``name`` (``pid_1``: only those that are PID 1 of a namespace)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as handle:
                status = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(status["PPid"]) == parent and status["Name"].strip() == name and \
                (not pid_1 or status["NSpid"].split()[-1] == "1"):
            found.append(int(entry))
    return found


def _spare_holders(helper: int) -> list[int]:
    """Holders the helper made ahead of need: its children still named like it, PID 1 of their namespace
    (unlike the intermediate child that forks them); waits for the one made after an answer."""
    deadline = time.monotonic() + 5
    while True:
        spares = _children_named(helper, NAME, pid_1=True)
        if spares or time.monotonic() > deadline:
            return spares
        time.sleep(0.02)


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while start_time(pid) is not None and time.monotonic() < deadline:  # the helper reaps its holders
        time.sleep(0.01)
    assert start_time(pid) is None, f"holder {pid} was not reaped"


@pytest.mark.parametrize("argv", [[], ["--control", "3"], ["--control", "x", "--pause", "4"],
                                  ["--pause", "4", "--other", "5"], ["--control", "3", "--pause", "-1"]])
def test_bad_command_lines_name_the_usage(argv: list[str]) -> None:
    proc = subprocess.run([executable(), *argv], capture_output=True, text=True, timeout=10)
    assert proc.returncode == 2
    assert "usage: sandbox-parent --control FD --pause FD" in proc.stderr


def test_a_control_that_is_no_seqpacket_socket_or_a_closed_pause_is_named() -> None:
    read_end, write_end = os.pipe()
    try:
        proc = subprocess.run([executable(), "--control", str(read_end), "--pause", str(write_end)],
                              pass_fds=(read_end, write_end), capture_output=True, text=True, timeout=10)
        assert proc.returncode == 2 and f"--control {read_end}: " in proc.stderr
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours, theirs:
            proc = subprocess.run([executable(), "--control", str(theirs.fileno()), "--pause", "4"],
                                  pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=10)
        assert proc.returncode == 2 and "not a SOCK_SEQPACKET socket" in proc.stderr
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            closed = max(theirs.fileno(), read_end, write_end) + 10
            proc = subprocess.run([executable(), "--control", str(theirs.fileno()), "--pause", str(closed)],
                                  pass_fds=(theirs.fileno(),), capture_output=True, text=True, timeout=10)
        assert proc.returncode == 2 and f"--pause {closed}: Bad file descriptor" in proc.stderr
    finally:
        os.close(read_end)
        os.close(write_end)


def test_malformed_requests_name_the_bad_field_and_the_helper_keeps_serving(helper: Helper) -> None:
    spare = _spare_holders(helper.proc.pid)
    assert len(spare) == 1
    cases = [
        (b"id=a", "the last field is not ended by a NUL byte"),
        (b"id=a\0junk\0", "field 2 (junk) is not name=value"),
        (b"=a\0", "field 1 (=a) is not name=value"),
        (_request(colour="blue"), "unknown field colour"),
        (_request(host_ipc="yes"), "field host_ipc=yes is not 0 or 1"),
        (_request(host_pid=""), "field host_pid= is not 0 or 1"),
        (_request(hostname="a") + b"hostname=b\0", "field hostname given twice"),
        (encode([("netns", "")]), "field id is missing or empty"),
        (encode([("id", "")]), "field id is missing or empty"),
        (_request(sysctl="/proc/sys/kernel/shmmax"), "field sysctl=/proc/sys/kernel/shmmax is not <path>=<value>"),
        (b"id=a\0" + b"x" * (MAX_MESSAGE + 1) + b"\0", f"more than {MAX_MESSAGE}"),
    ]
    for message, expected in cases:
        assert expected in helper.error(message), message
    # nothing was forked for them: the same spare waits, and serves the next good request
    assert _spare_holders(helper.proc.pid) == spare
    pid = int(helper.ask(_request(hostname="after-errors"))["pid"])
    try:
        assert pid == spare[0]
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            assert handle.read() == b"[sandbox-sp-test]\0"
    finally:
        _kill(pid)


@pytest.mark.parametrize("path", ["/etc/hostname", "/proc/sys/../../etc/hostname", "/proc/sysfoo/x",
                                  "proc/sys/kernel/shmmax"])
def test_a_path_outside_proc_sys_is_refused_before_any_fork(helper: Helper, path: str) -> None:
    spare = _spare_holders(helper.proc.pid)
    assert helper.error(_request(sysctl=f"{path}=1")) == f"not a sysctl file: {path}"
    assert _spare_holders(helper.proc.pid) == spare


def test_holder_failures_name_what_failed_and_leave_no_process(helper: Helper, tmp_path) -> None:
    missing = str(tmp_path / "missing-netns")
    not_a_netns = str(tmp_path / "plain-file")
    with open(not_a_netns, "w"):
        pass
    cases = [
        (_request(netns=missing), f"open netns {missing}: No such file or directory"),
        (_request(netns=not_a_netns), f"setns {not_a_netns}: Invalid argument"),
        (_request(hostname="h" * 65), f"sethostname {'h' * 65}: Invalid argument"),
        (_request(sysctl="/proc/sys/kernel/no_such_sysctl=1"), "sysctl kernel/no_such_sysctl=1: No such file"),
        (_request(sysctl="/proc/sys/kernel/shmmni=not-a-number"), "sysctl kernel/shmmni=not-a-number: Invalid"),
        # the old way (host IPC: no spare fits) reports the same
        (_request(netns=missing, host_ipc="1"), f"open netns {missing}: No such file or directory"),
    ]
    for message, expected in cases:
        assert expected in helper.error(message), message
    # each failed holder exited and was reaped; one spare waits for the next pod
    deadline = time.monotonic() + 5
    while len(_children_named(helper.proc.pid, "sandbox-sp-test")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _children_named(helper.proc.pid, "sandbox-sp-test") == []
    assert len(_spare_holders(helper.proc.pid)) == 1


def test_a_dead_spare_is_replaced_and_eof_ends_helper_and_spare(helper: Helper) -> None:
    spare = _spare_holders(helper.proc.pid)
    os.kill(spare[0], signal.SIGKILL)
    pid = int(helper.ask(_request(sysctl="/proc/sys/kernel/shm_rmid_forced=1"))["pid"])
    try:
        assert pid != spare[0]
        assert os.readlink(f"/proc/{pid}/ns/ipc") != os.readlink("/proc/self/ns/ipc")
        value = subprocess.run(["nsenter", "-t", str(pid), "-i", "cat", "/proc/sys/kernel/shm_rmid_forced"],
                               capture_output=True, text=True, check=True).stdout
        assert value.strip() == "1"
        new_spare = _spare_holders(helper.proc.pid)
        assert len(new_spare) == 1 and new_spare != spare
    finally:
        _kill(pid)
    helper.sock.close()
    assert helper.proc.wait(5) == 0
    deadline = time.monotonic() + 5
    while start_time(new_spare[0]) is not None and time.monotonic() < deadline:  # it read EOF and exited
        try:  # re-parented to this process when a fixture made it a subreaper
            os.waitpid(new_spare[0], os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.02)
    assert start_time(new_spare[0]) is None


def _rollup(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/smaps_rollup") as handle:
        return {line.split(":")[0]: int(line.split()[1]) for line in handle if line.endswith("kB\n")}


def test_the_helper_and_its_spare_cost_well_under_a_megabyte(helper: Helper) -> None:
    pid = int(helper.ask(_request())["pid"])
    try:
        for process in (helper.proc.pid, _spare_holders(helper.proc.pid)[0]):
            memory = _rollup(process)
            assert memory["Pss"] < 1024 and memory["Private_Dirty"] < 512, (process, memory)
    finally:
        _kill(pid)


def test_doctor_finds_the_helper() -> None:
    findings = {f.subject: f for f in checks(Sandboxer("runc", "/run/runc-sandboxer.sock", "/run/kuasar-runc", None))}
    assert findings["sandbox-parent helper"].status is Status.OK
    assert findings["sandbox-parent helper"].detail == executable()
