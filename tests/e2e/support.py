"""Helpers shared by the end-to-end tests (tests/e2e/conftest.py puts this folder on sys.path).

Generic: :class:`Ctl` (kuasar-ctl for any sandbox type), :func:`wait_for`, :func:`pids_with`,
:func:`running`, :func:`kill`, :func:`tool`, :func:`start_daemon` / :func:`stop_daemon` (a sandboxer on a
private socket), :func:`task_server_record`, :func:`pod_config` / :func:`container_config` (CRI configs for
kuasar-ctl), :func:`wasm_image` (a WASI module compiled into an image), and for cleanup checks
:func:`stop_and_remove`, :func:`mounts_under`, :func:`cgroups_named` and :func:`assert_gone`.
For the types with a task server (runc, wasm, quark): :data:`KINDS`, how each spells a ticking container and
one that exits 42 (wasm's with :data:`TICKER_C`; conftest.py's ``sandboxer`` and ``ticker_images`` fixtures
start one and build the other).
For vmm pods: the ``guest_image`` and ``vmm`` fixtures (registered for every e2e module by conftest.py; a
module-scoped fixture there gives each module its own sandboxer and VM), :class:`Sandboxer`,
:func:`running_sandboxer` (one with other config settings) and :func:`assert_nothing_left`.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import pytest
from kuasar_vmm_task.image.build import default_outdir

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
IMAGE_DIR = default_outdir()
QEMU = "/usr/bin/qemu-system-x86_64"

T = TypeVar("T")

#: the wasm workload: "tick" prints forever, "exit N" exits with N after a second, "echo X" prints X
TICKER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *mode = argc > 1 ? argv[1] : "";
    if (!strcmp(mode, "tick")) { for (int i = 0;; i++) { printf("tick %d\n", i); fflush(stdout); usleep(200000); } }
    if (!strcmp(mode, "exit")) { sleep(1); return atoi(argv[2]); }
    if (!strcmp(mode, "echo")) { usleep(300000); printf("%s\n", argv[2]); return 0; }
    return 1;
}
"""


@dataclass
class Kind:
    """How one sandbox type's workload is spelled."""

    name: str
    image: str
    tick: list[str]
    exit42: list[str]
    exec_echo: list[str]  # the exec prints its last argument after ~0.3 s


SHELL = dict(tick=["/bin/sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"],
             exit42=["/bin/sh", "-c", "sleep 1; exit 42"], exec_echo=["sh", "-c", "sleep 0.3; echo $0", "done"])
KINDS = {
    "runc": Kind("runc", "busybox", **SHELL),
    "quark": Kind("quark", "busybox", **SHELL),
    "wasm": Kind("wasm", "ticker", ["/bin/ticker.wasm", "tick"], ["/bin/ticker.wasm", "exit", "42"],
                 ["/bin/ticker.wasm", "echo", "done"]),
}


def tool(name: str) -> str:
    """The console script of this venv, else the one on PATH."""
    path = os.path.join(BIN, name)
    return path if os.path.exists(path) else (shutil.which(name) or name)


class Ctl:
    """kuasar-ctl bound to one sandboxer endpoint, state root, image dir and stdio mode."""

    def __init__(self, sandbox: str, endpoint: str, root: str, images: str, io: str = "streaming") -> None:
        self.root = root
        self.base = [tool("kuasar-ctl"), "-s", sandbox, "--endpoint", endpoint, "--root", root,
                     "--images", images, "--io", io]

    def __call__(self, *args: str, check: bool = True, stdin: str = "",
                 timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.base + list(args), input=stdin.encode(), capture_output=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kuasar-ctl {' '.join(args)} -> {proc.returncode}\n{proc.stderr.decode()}")
        return proc

    def out(self, *args: str, timeout: float = 60) -> str:
        return self(*args, timeout=timeout).stdout.decode().strip()


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.2) -> T:
    """The first truthy value of ``predicate``; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not met in time")


def _cmdline(pid: str) -> bytes:
    """The NUL-separated command line of ``pid``; empty once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def pids_with(needle: str, unless: tuple[str, ...] = ()) -> list[int]:
    """Processes (other than this one) whose command line contains ``needle`` and none of ``unless``."""
    lines = {int(pid): _cmdline(pid) for pid in filter(str.isdigit, os.listdir("/proc"))}
    return [pid for pid, cmdline in lines.items() if needle.encode() in cmdline and pid != os.getpid()
            and not any(u.encode() in cmdline for u in unless)]


def running(pid: int) -> bool:
    """Alive and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill(pids: list[int]) -> None:
    """SIGKILL each pid; already gone is fine."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def start_daemon(argv: list[str], listen: str, log: str, timeout: float = 20.0) -> subprocess.Popen:
    """Start a sandboxer (own session, output appended to ``log``) and wait until its socket exists,
    so a test never talks to a daemon that is not listening yet."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while not os.path.exists(listen):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            with open(log) as f:
                raise AssertionError(f"{os.path.basename(argv[0])} did not start:\n{f.read()}")
        time.sleep(0.05)
    return proc


def stop_daemon(proc: subprocess.Popen, timeout: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; True when it stopped on SIGTERM alone."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def wasm_image(images: Path, image: str, module: str, c_source: str) -> Path:
    """Compile ``c_source`` for WASI into ``<images>/<image>/bin/<module>`` (an image of kuasar-ctl's
    ``--images``); returns that bin directory. Skips the test where the toolchain cannot be installed."""
    if not shutil.which("clang") or not os.path.exists("/usr/lib/wasm32-wasi/libc.a"):
        pytest.skip("needs clang, lld, wasi-libc and libclang-rt-dev-wasm32 (hack/setup.sh installs them)")
    bin_dir = images / image / "bin"
    bin_dir.mkdir(parents=True)
    source = images / (os.path.splitext(module)[0] + ".c")
    source.write_text(c_source)
    subprocess.run(["clang", "--target=wasm32-wasi", "-O2", "-o", str(bin_dir / module), str(source)], check=True)
    return bin_dir


def task_server_record(state_dir: str) -> dict:
    """The sandboxer's record of its task server and front (``<dir>/task-server.json``)."""
    with open(os.path.join(state_dir, "task-server.json")) as f:
        return json.load(f)


def pod_config(path: str, name: str, cgroup_parent: str, log_directory: str, hostname: str = "",
               pod_namespaces: bool = True) -> str:
    """Write a CRI PodSandboxConfig (JSON) for ``kuasar-ctl runp`` and return its path. ``pod_namespaces``
    states network, PID and IPC as per-pod (CRI NamespaceMode.POD) explicitly."""
    doc: dict[str, Any] = {"metadata": {"name": name, "namespace": "e2e", "uid": uuid.uuid4().hex}}
    if hostname:
        doc["hostname"] = hostname
    doc["log_directory"] = log_directory
    doc["linux"] = {"cgroup_parent": cgroup_parent}
    if pod_namespaces:
        doc["linux"]["security_context"] = {"namespace_options": {"network": 0, "pid": 0, "ipc": 0}}
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def container_config(path: str, name: str, command: list[str], image: str = "busybox", **extra: Any) -> str:
    """Write a CRI ContainerConfig (JSON) logging to ``<name>.log`` and return its path; ``extra`` adds
    fields such as ``mounts`` or ``envs``."""
    doc = {"metadata": {"name": name}, "image": {"image": image}, "command": command, "log_path": f"{name}.log",
           **extra}
    with open(path, "w") as f:
        json.dump(doc, f)
    return path


def mounts_under(paths: list[str]) -> list[str]:
    """Mount points whose path contains any of ``paths`` (what a removed pod must not leave)."""
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if any(p in line.split()[4] for p in paths)]


def cgroups_named(cgroup_parent: str) -> list[str]:
    """``cgroup <hierarchy>`` for every hierarchy under /sys/fs/cgroup that still has ``cgroup_parent``."""
    return [f"cgroup {c}" for c in os.listdir("/sys/fs/cgroup")
            if os.path.exists(os.path.join("/sys/fs/cgroup", c, cgroup_parent.strip("/")))]


def stop_and_remove(ctl: Ctl, container: str, pod: str) -> None:
    """The removal sequence every sandbox type must pass: ``stop`` kills the container (exit 137), ``rm``
    removes it, ``stopp`` leaves the pod NotReady and ``rmp`` removes it."""
    ctl("stop", container)
    status = json.loads(ctl.out("inspect", container))["status"]
    assert status["state"] == "CONTAINER_EXITED" and status["exitCode"] == 137
    ctl("rm", container)
    ctl("stopp", pod)
    assert json.loads(ctl.out("inspectp", pod))["status"]["state"] == "SANDBOX_NOTREADY"
    ctl("rmp", pod)


def assert_gone(leftovers: Callable[[], list[str]], timeout: float = 10.0) -> None:
    """Wait until ``leftovers`` is empty (cleanup may finish asynchronously), else fail showing it."""
    try:
        wait_for(lambda: not leftovers(), timeout)
    except AssertionError:
        assert leftovers() == []


@pytest.fixture(scope="module")
def guest_image() -> str:
    """The cached guest kernel + initrd, rebuilt only when its sources changed."""
    if os.geteuid() != 0 or not os.path.exists(QEMU):
        pytest.skip("QEMU (and root) cannot exist on this machine")
    from kuasar_vmm_task.image.build import build
    build(IMAGE_DIR, os.path.join(IMAGE_DIR, ".cache"))
    return IMAGE_DIR


def log_tail(path: str, lines: int = 120) -> str:
    """The last ``lines`` lines of the text file at ``path``."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 256 * lines))
        return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])


class Sandboxer:
    """A vmm-sandboxer on a private socket and dir (short: unix socket paths < 108 bytes)."""

    def __init__(self, image_dir: str, config_file: bool = True, **settings: str) -> None:
        """``settings``: config keys to set, as TOML values (``machine_type='"microvm"'``); without
        ``config_file`` the sandboxer starts with no ``--config``, as an operator would by hand."""
        self.config_file = config_file
        self.work = tempfile.mkdtemp(prefix="kve2e", dir="/tmp")
        self.dir, self.listen = os.path.join(self.work, "d"), os.path.join(self.work, "vmm.sock")
        self.config = os.path.join(self.work, "config_qemu.toml")
        with open(os.path.join(REPO, "vmm-sandboxer", "config_qemu.toml")) as f:
            text = f.read().replace("/var/lib/kuasar/", image_dir.rstrip("/") + "/")
        for key, value in settings.items():
            text, found = re.subn(rf"(?m)^{key} = .*$", f"{key} = {value}", text)
            assert found == 1, f"config_qemu.toml has no {key} line"
        with open(self.config, "w") as f:
            f.write(text)
        self.log = os.path.join(self.work, "sandboxer.log")
        self.proc: Any = None  # the running subprocess.Popen

    def start(self) -> None:
        with open(self.log, "ab") as log:
            config = ["--config", self.config] if self.config_file else []
            self.proc = subprocess.Popen([tool("vmm-sandboxer"), "--listen", self.listen, "--dir", self.dir,
                                          *config, "--log-level", "info"],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.listen):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                raise AssertionError("vmm-sandboxer did not start:\n" + open(self.log).read())
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def diagnostics(self) -> list[tuple[str, str]]:
        """The ends of its log and of each remaining VM's console log (a failed test shows them: CI keeps
        nothing else)."""
        logs = [("vmm-sandboxer log", self.log)]
        logs += [(f"console of {os.path.basename(os.path.dirname(path))}", path)
                 for path in sorted(glob.glob(os.path.join(self.dir, "*", "console.log")))]
        return [(title, log_tail(path)) for title, path in logs if os.path.exists(path)]

    def cleanup(self) -> None:
        """The relay (and a pod's QEMU) outlive the sandboxer by design; kill whatever is left of ours."""
        kill(pids_with(self.dir))
        subprocess.run(["umount", "-R", "-l", self.work], stderr=subprocess.DEVNULL, check=False)
        shutil.rmtree(self.work, ignore_errors=True)


@contextlib.contextmanager
def running_sandboxer(image_dir: str, config_file: bool = True, **settings: str) -> Iterator[Sandboxer]:
    """A started :class:`Sandboxer` (arguments as for it); stopped and cleaned up afterwards."""
    sandboxer = Sandboxer(image_dir, config_file, **settings)
    sandboxer.start()
    try:
        yield sandboxer
    finally:
        sandboxer.stop()
        sandboxer.cleanup()


@contextlib.contextmanager
def template_sandboxer(image_dir: str, **settings: str) -> Iterator[tuple[Sandboxer, str]]:
    """A started :class:`Sandboxer` with ``template = "auto"`` and a template_dir of its own (removed afterwards)."""
    tdir = tempfile.mkdtemp(prefix="kvtpl", dir="/tmp")
    try:
        with running_sandboxer(image_dir, template='"auto"', template_dir=f'"{tdir}"', **settings) as sandboxer:
            yield sandboxer, tdir
    finally:
        shutil.rmtree(tdir, ignore_errors=True)


def start_sleeping_pod(ctl: Ctl, tmp: Any, name: str, network: int, runp: tuple[str, ...] = ()) -> dict[str, Any]:
    """``runp`` (with ``runp`` options) of a pod ``name`` with a cgroup parent of its own and the CRI network mode
    ``network`` (0 pod, 2 node), then a busybox ``sleep`` container in it; how long that took."""
    tag = uuid.uuid4().hex[:6]
    cfg = tmp / f"{name}.json"
    cfg.write_text(json.dumps({
        "metadata": {"name": f"{name}-{tag}", "namespace": "e2e", "uid": uuid.uuid4().hex},
        "hostname": f"{name}-{tag}", "log_directory": str(tmp / f"logs-{name}"),
        "linux": {"cgroup_parent": f"/kuasar-e2e-{name}-{tag}",
                  "security_context": {"namespace_options": {"network": network, "pid": 0, "ipc": 0}}}}))
    started = time.monotonic()
    pod_id = ctl.out("runp", *runp, str(cfg), timeout=180)
    ctr_cfg = tmp / f"{name}-c.json"
    ctr_cfg.write_text(json.dumps({"metadata": {"name": "c"}, "image": {"image": "busybox"},
                                   "log_path": "c.log", "command": ["sleep", "3600"]}))
    ctr = ctl.out("create", pod_id, str(ctr_cfg), str(cfg))
    ctl("start", ctr)
    return {"id": pod_id, "ctr": ctr, "hostname": f"{name}-{tag}", "cgroup": f"kuasar-e2e-{name}-{tag}",
            "seconds": time.monotonic() - started, "ctl": ctl, "root": ctl.root}


@pytest.fixture(scope="module")
def vmm(guest_image: str) -> Iterator[Sandboxer]:
    """A running vmm-sandboxer for one test module."""
    with running_sandboxer(guest_image) as sandboxer:
        yield sandboxer


def assert_nothing_left(sandboxer: Sandboxer, pod_id: str, netns: str, roots: list[str], cgroup: str) -> None:
    """No process, mount under the sandboxer's or ``roots``' dirs, pod dir, netns, tap or cgroup of this pod."""
    def leftovers() -> list[str]:
        found = [f"process {p}" for p in pids_with(pod_id)]
        with open("/proc/self/mountinfo") as f:
            found += [line.split()[4] for line in f
                      if any(d in line.split()[4] for d in [sandboxer.work, *roots])]
        if os.path.exists(os.path.join(sandboxer.dir, pod_id)):
            found.append(os.path.join(sandboxer.dir, pod_id))
        if netns and os.path.exists(netns):
            found.append(netns)
        found += [f"link {line}" for line in subprocess.run(["ip", "-o", "link"], capture_output=True,
                                                            text=True).stdout.splitlines() if "tap_kua" in line]
        found += [f"cgroup {c}" for c in os.listdir("/sys/fs/cgroup")
                  if os.path.exists(os.path.join("/sys/fs/cgroup", c, cgroup))]
        return found
    try:
        wait_for(lambda: not leftovers(), 10)
    except AssertionError:
        found = leftovers()
        assert found == [], "left behind: %s" % found


def ip(*args: str) -> str:
    """``ip ARGS`` (iproute2)'s output. :raise AssertionError: it failed, with its message."""
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def veth_netns_pair(pod_ns: str, peer_ns: str, pod_ip: str, peer_ip: str, made: list[str]) -> str:
    """Two new network namespaces joined by a veth pair, as a CNI plugin leaves a pod: ``eth0`` in ``pod_ns``
    (``pod_ip``/24, default route via the peer) and ``peer`` in ``peer_ns`` (``peer_ip``/24). Each namespace is
    appended to ``made`` as soon as it exists, for the caller to delete. Returns eth0's MAC."""
    for name in (pod_ns, peer_ns):
        ip("netns", "add", name)
        made.append(name)
        ip("-n", name, "link", "set", "lo", "up")
    ip("-n", pod_ns, "link", "add", "eth0", "type", "veth", "peer", "name", "peer", "netns", peer_ns)
    ip("-n", pod_ns, "addr", "add", f"{pod_ip}/24", "dev", "eth0")
    ip("-n", peer_ns, "addr", "add", f"{peer_ip}/24", "dev", "peer")
    ip("-n", pod_ns, "link", "set", "eth0", "up")
    ip("-n", peer_ns, "link", "set", "peer", "up")
    ip("-n", pod_ns, "route", "add", "default", "via", peer_ip)
    mac: str = json.loads(ip("-n", pod_ns, "-j", "link", "show", "eth0"))[0]["address"]
    return mac
