"""daemon.run: the common runner, exercised as a real daemon process (signals, READY, --daemon)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

DAEMON = r'''
import asyncio, os, sys
from kuasar_shared import process
from kuasar_shared.daemon import parse_args, run_daemon

MODE = os.environ["TEST_MODE"]

async def main(ctx):
    os.makedirs(ctx.args.dir, exist_ok=True)
    if MODE == "fail":
        raise RuntimeError("cannot bind")
    child = process.spawn(["sleep", "60"], stdout=process.DEVNULL, stderr=process.DEVNULL,
                          start_new_session=True)
    with open(os.path.join(ctx.args.dir, "child.pid"), "w") as f:
        f.write(str(child.pid))
    with open(os.path.join(ctx.args.dir, "daemon.pid"), "w") as f:
        f.write(str(os.getpid()))
    if MODE == "task-fails":
        async def boom():
            raise RuntimeError("background boom")
        ctx.create_task(boom(), name="boom")
    ctx.create_task(asyncio.sleep(3600), name="idle")
    ctx.set_reload(lambda: print("reloaded", flush=True))
    ctx.ready("serving")
    await ctx.shutdown_event.wait()
    print("clean shutdown", ctx.is_ready, flush=True)

args = parse_args("test-sandboxer", "9.9", sandbox_type="test")
sys.exit(run_daemon("test-sandboxer", "9.9", args, main))
'''


@pytest.fixture
def notify(tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    yield path, sock
    sock.close()


def start(tmp_path, mode: str, notify_path: str, *extra: str) -> subprocess.Popen:
    script = tmp_path / "fake_sandboxer.py"
    script.write_text(DAEMON)
    env = dict(os.environ, TEST_MODE=mode, NOTIFY_SOCKET=notify_path)
    return subprocess.Popen([sys.executable, str(script), "--dir", str(tmp_path / "state"), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs. A detached daemon is reparented to the nearest child subreaper, which is this
    test process when an earlier test in it made itself one: then it ends as our zombie, reaped here."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            state = handle.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    if state != "Z":
        return True
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return False


def kill_pidfile(path) -> None:
    try:
        os.kill(int(path.read_text()), signal.SIGKILL)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        pass


def test_ready_then_sigterm_is_a_clean_shutdown_leaving_children(tmp_path, notify) -> None:
    path, sock = notify
    proc = start(tmp_path, "ok", path, "--log-level", "debug")
    try:
        ready = sock.recv(4096).decode()
        assert ready.startswith("READY=1\nMAINPID=%d" % proc.pid) and "STATUS=serving" in ready
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert "reloaded" in out and "clean shutdown True" in out
        assert sock.recv(4096) == b"STOPPING=1"
        assert "test-sandboxer 9.9 ready: config (none), listening on" in err and ", serving" in err
        assert "test-sandboxer stopped" in err
        child = int((tmp_path / "state" / "child.pid").read_text())
        os.kill(child, 0)  # the daemon's children (pods) survive a clean shutdown
    finally:
        proc.kill()
        proc.wait()
        kill_pidfile(tmp_path / "state" / "child.pid")


def test_main_failure_exits_1(tmp_path, notify) -> None:
    proc = start(tmp_path, "fail", notify[0])
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "test-sandboxer failed" in err and "cannot bind" in err


def test_failed_background_task_requests_shutdown(tmp_path, notify) -> None:
    proc = start(tmp_path, "task-fails", notify[0])
    try:
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 0
        assert "background task boom failed" in err and "clean shutdown" in out
    finally:
        kill_pidfile(tmp_path / "state" / "child.pid")


def test_version_flag(tmp_path, notify) -> None:
    proc = start(tmp_path, "ok", notify[0], "--version")
    out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.strip() == "test-sandboxer 9.9"


def test_daemon_flag_detaches_and_logs_to_dir(tmp_path, notify) -> None:
    path, sock = notify
    proc = start(tmp_path, "ok", path, "--daemon")
    state = tmp_path / "state"
    try:
        proc.communicate(timeout=10)
        assert proc.returncode == 0  # the launcher returns once detached
        assert sock.recv(4096).startswith(b"READY=1")
        pid = int((state / "daemon.pid").read_text())
        assert pid != proc.pid
        assert os.getsid(pid) != os.getsid(0)  # detached into its own session
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.05)
        else:
            pytest.fail("daemonized process did not stop on SIGTERM")
        log = (state / "test-sandboxer.log").read_text()
        assert ", serving" in log and "ready: config" in log and "test-sandboxer stopped" in log
    finally:
        kill_pidfile(state / "daemon.pid")
        kill_pidfile(state / "child.pid")
