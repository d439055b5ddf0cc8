"""Quark (QVisor + QKernel) as the pod's application kernel, by upstream Kuasar's contract.

Pod start writes the sandbox bundle to ``<dir>/<id>/sandbox`` and spawns
``quark -r <bundle> sandbox --task-socket <dir>/<id>/quark-task.sock --id <id> --pid-file
<dir>/<id>/pid``; the Task API is then served by Quark itself on that socket (address
``ttrpc+unix://...``: upstream's plain ``unix://`` is rejected by containerd). Quark needs
``"Sandboxed": true`` and ``"ShimMode": false`` in ``/etc/quark/config.json``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil

from kuasar_shared import process
from kuasar_shared.errors import Internal
from kuasar_shared.process_identity import is_same_process, kill, start_time, wait_exit
from kuasar_shared.oci import read_pid_file

from kuasar_quark_sandboxer.config import QuarkConfig
from kuasar_quark_sandboxer.kernel import Kernel, Started
from kuasar_quark_sandboxer.pause import write_sandbox_bundle
from kuasar_quark_sandboxer.pod import Pod

__all__ = ["QuarkKernel", "TASK_SOCKET", "PID_FILE", "quark_argv"]

log = logging.getLogger(__name__)

TASK_SOCKET = "quark-task.sock"
PID_FILE = "pid"


def quark_argv(binary: str, pod_dir: str, sandbox_id: str) -> list[str]:
    """Upstream's command line of a pod's Quark sandbox."""
    return [binary, "-r", os.path.join(pod_dir, "sandbox"), "sandbox",
            "--task-socket", os.path.join(pod_dir, TASK_SOCKET), "--id", sandbox_id,
            "--pid-file", os.path.join(pod_dir, PID_FILE)]


class QuarkKernel(Kernel):
    """Pods as ``quark sandbox`` processes, each serving its own Task API."""

    name = "quark"
    uses_task_server = False
    #: seconds for a new sandbox to write its pid file and bind its task socket
    start_timeout = 30.0

    def __init__(self, config: QuarkConfig) -> None:
        self.config = config

    async def start(self, pod: Pod, pod_dir: str) -> Started:
        write_sandbox_bundle(os.path.join(pod_dir, "sandbox"), pod.id, hostname=pod.hostname, netns=pod.netns)
        socket_path = os.path.join(pod_dir, TASK_SOCKET)
        pid_file = os.path.join(pod_dir, PID_FILE)
        child = process.spawn(quark_argv(self.config.path, pod_dir, pod.id), start_new_session=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        while not (os.path.exists(pid_file) and os.path.exists(socket_path)):
            if child.returncode is not None or loop.time() > deadline:
                child.kill()
                raise Internal(f"sandbox {pod.id}: quark did not start (status {child.returncode}); "
                               f"see its log")
            await asyncio.sleep(0.02)
        pid = read_pid_file(pid_file)
        log.info("sandbox %s: quark sandbox pid %d", pod.id, pid)
        return Started(pid=pid, pid_start=start_time(pid), address="ttrpc+unix://" + socket_path)

    async def stop(self, pod: Pod, pod_dir: str) -> None:
        if is_same_process(pod.pid, pod.pid_start):
            kill(pod.pid)
            await wait_exit(pod.pid)

    async def cleanup(self, pod: Pod, pod_dir: str) -> None:
        for name in (TASK_SOCKET, PID_FILE):
            try:
                os.unlink(os.path.join(pod_dir, name))
            except FileNotFoundError:
                pass
        shutil.rmtree(os.path.join(pod_dir, "sandbox"), ignore_errors=True)
