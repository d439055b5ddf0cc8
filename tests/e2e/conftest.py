"""Fixtures for end-to-end tests through kuasar-ctl: a private runc-sandboxer, a private sandboxer of the type a
test is parametrised with (``sandboxer``), a busybox image, the wasm ticker image, and (from support.py) the vmm
guest image and a module-scoped vmm-sandboxer."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the e2e modules import support.py

from support import REPO, TICKER_C, Sandboxer, guest_image, log_tail, pids_with, start_daemon, stop_daemon, \
    tool as _tool, vmm, wasm_image  # noqa: E402,F401  (fixtures for every e2e module)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with the logs of the sandboxers it used (their dirs go with the clean-up)."""
    outcome = yield
    report = outcome.get_result()
    if report.when != "call" or not report.failed:
        return
    args = getattr(item, "funcargs", {})
    for name, value in args.items():
        for sandboxer in (value if isinstance(value, tuple) else (value,)):
            if isinstance(sandboxer, Sandboxer):
                report.sections += [(f"{name}: {title}", text) for title, text in sandboxer.diagnostics()]
    tmp = args.get("tmp_path")
    if tmp is not None and (tmp / "sandboxer.log").exists():
        report.sections.append(("sandboxer log", log_tail(str(tmp / "sandboxer.log"))))


@pytest.fixture(scope="session")
def images(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("images")
    subprocess.run(["sh", os.path.join(REPO, "hack", "make-busybox-rootfs.sh"), str(out / "busybox")],
                   check=True, stdout=subprocess.DEVNULL)
    return str(out)


@pytest.fixture(scope="module")
def ticker_images(tmp_path_factory) -> str:
    """The image ``ticker`` holding /bin/ticker.wasm (support.TICKER_C), wasm's spelling of support.KINDS."""
    images = tmp_path_factory.mktemp("ticker-images")
    wasm_image(images, "ticker", "ticker.wasm", TICKER_C)
    return str(images)


@pytest.fixture
def sandboxer_metrics() -> bool:
    """Whether ``sandboxer`` serves metrics (on <tmp_path>/metrics.sock); a test parametrizes it to turn them on."""
    return False


@pytest.fixture
def sandboxer(request, tmp_path, sandboxer_metrics) -> Iterator[tuple[str, str]]:
    """The sandboxer of the test's type (indirect parameter: runc, wasm or quark) on a private socket and dir;
    it, its task front and server, and anything of a failed test are stopped afterwards."""
    kind = request.param
    if os.geteuid() != 0 or {"runc": not shutil.which("runc"), "quark": not shutil.which("runsc")}.get(kind):
        pytest.skip(f"needs root and the {kind} runtime")
    listen, state = str(tmp_path / f"{kind}.sock"), str(tmp_path / "dir")
    metrics = ["--metrics-listen", "unix:" + str(tmp_path / "metrics.sock")] if sandboxer_metrics else []
    proc = start_daemon([_tool(f"{kind}-sandboxer"), "--listen", listen, "--dir", state, "--log-level", "info",
                         *metrics], listen, str(tmp_path / "sandboxer.log"))
    yield listen, state
    stop_daemon(proc)
    # the task front and server outlive the sandboxer by design (the forked first server has its command line)
    for pid in pids_with(state):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def runc_sandboxer(tmp_path):
    """A runc-sandboxer on a private socket and dir; stopped (and its task server) afterwards."""
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc")
    listen, state = str(tmp_path / "runc.sock"), str(tmp_path / "dir")
    log = open(tmp_path / "sandboxer.log", "wb")
    proc = subprocess.Popen([_tool("runc-sandboxer"), "--listen", listen, "--dir", state, "--log-level", "debug"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while not os.path.exists(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("runc-sandboxer did not start:\n" + (tmp_path / "sandboxer.log").read_text())
        time.sleep(0.05)
    yield listen, state
    task_pids = _task_server_pids(state)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for pid in task_pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    log.close()


def _task_server_pids(state_dir: str) -> list[int]:
    """runc-task and task front processes serving this private dir (they outlive the sandboxer by design): by
    name too, since the first server is a fork of the sandboxer and keeps its command line (naming the dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        named = comm in ("runc-task", "kuasar-taskfron") or any(b"runc-task" in a or b"taskfront" in a
                                                                for a in argv[:4])
        if named and any(state_dir.encode() in a for a in argv):
            pids.append(int(entry))
    return pids
