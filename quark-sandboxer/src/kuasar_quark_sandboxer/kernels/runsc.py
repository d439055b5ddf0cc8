"""gVisor's runsc as the pod's application kernel: one sandbox (Sentry + gofers) per pod.

Pod start writes the root container's bundle (:mod:`..pause`) to ``<dir>/<id>/sandbox`` and runs
``runsc create`` + ``start`` with the pod id as container id, in the pod's network namespace when
there is one (``--network=sandbox``: gVisor's netstack takes over the namespace's interfaces and
routes), with ``--network=host`` for a pod that asked for the node's network (gVisor then uses the
host's network stack, so the node's ports and addresses are the pod's), else ``--network=none``
(and always when the configured network is ``none``). The Sentry's pid is the pod's pid: containerd writes
``/proc/<pid>/ns/...`` paths of it into container specs and quark-task runs every container of
the pod inside this sandbox. Stop kills the root container, which ends the whole sandbox; clean-up
is ``runsc delete -force``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal

from kuasar_shared.errors import KuasarError, NotFound
from kuasar_shared.process_identity import is_same_process, kill, start_time, wait_exit
from kuasar_shared.oci import OciRuntime

from kuasar_quark_sandboxer.config import RunscConfig
from kuasar_quark_sandboxer.kernel import Kernel, Started
from kuasar_quark_sandboxer.pause import write_sandbox_bundle
from kuasar_quark_sandboxer.pod import Pod, RuntimeInvocation

__all__ = ["RunscKernel", "RUNSC_ROOT", "HIDE_PROC_SYS_NET"]

log = logging.getLogger(__name__)

#: runsc's state root below the sandboxer's --dir (shared with quark-task; not a pod id)
RUNSC_ROOT = ".runsc"
#: runs ``runsc start`` with an empty /proc/sys/net (see RunscConfig.hide_proc_sys_net)
HIDE_PROC_SYS_NET = ("unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                     'mount -t tmpfs -o size=4k kuasar-hide /proc/sys/net && exec "$@"', "runsc-start")


class RunscKernel(Kernel):
    """Pods as runsc sandboxes below ``<directory>/.runsc``."""

    name = "runsc"
    uses_task_server = True
    #: seconds to wait for the Sentry to exit after its root container was killed
    stop_timeout = 10.0

    def __init__(self, directory: str, config: RunscConfig) -> None:
        self.root = os.path.join(os.path.abspath(directory), RUNSC_ROOT)
        self.config = config

    def _invocation(self, pod: Pod) -> RuntimeInvocation:
        if pod.netns or self.config.network == "none":
            network = self.config.network
        else:
            network = "host" if pod.host_network else "none"
        return RuntimeInvocation(binary=self.config.path, root=self.root,
                                 global_args=[f"--platform={self.config.platform}", f"--network={network}",
                                              *self.config.extra_flags])

    @staticmethod
    def _runtime(invocation: RuntimeInvocation, prefix: tuple[str, ...] = ()) -> OciRuntime:
        return OciRuntime(invocation.binary, invocation.root, invocation.global_args, prefix=prefix)

    async def start(self, pod: Pod, pod_dir: str) -> Started:
        invocation = self._invocation(pod)
        bundle = os.path.join(pod_dir, "sandbox")
        cgroups_path = "/" + "/".join(p for p in (pod.cgroup_parent.strip("/"), pod.id) if p) \
            if pod.cgroup_parent else ""
        write_sandbox_bundle(bundle, pod.id, hostname=pod.hostname, netns=pod.netns, cgroups_path=cgroups_path,
                             host_network="--network=host" in invocation.global_args)
        runtime = self._runtime(invocation)
        pid = await runtime.create(pod.id, bundle, os.path.join(pod_dir, "sandbox.pid"))
        hide = self.config.hide_proc_sys_net and "--network=sandbox" in invocation.global_args
        try:
            await self._runtime(invocation, HIDE_PROC_SYS_NET if hide else ()).start(pod.id)
        except BaseException:
            await self._delete(runtime, pod.id)
            raise
        log.info("sandbox %s: runsc sandbox pid %d (%s)", pod.id, pid, " ".join(invocation.global_args))
        return Started(pid=pid, pid_start=start_time(pid), runtime=invocation)

    async def stop(self, pod: Pod, pod_dir: str) -> None:
        if not is_same_process(pod.pid, pod.pid_start):
            return
        try:
            await self._runtime(pod.runtime).kill(pod.id, signal.SIGKILL)
        except KuasarError as err:
            log.warning("sandbox %s: runsc kill failed (%s); killing the sandbox pid %d", pod.id, err, pod.pid)
            kill(pod.pid)
        try:
            await asyncio.wait_for(wait_exit(pod.pid), self.stop_timeout)
        except asyncio.TimeoutError:
            log.warning("sandbox %s: sandbox pid %d still alive after %s s; killing it", pod.id, pod.pid,
                        self.stop_timeout)
            kill(pod.pid)
            await wait_exit(pod.pid)

    async def cleanup(self, pod: Pod, pod_dir: str) -> None:
        await self._delete(self._runtime(pod.runtime if pod.runtime.binary else self._invocation(pod)), pod.id)
        shutil.rmtree(os.path.join(pod_dir, "sandbox"), ignore_errors=True)
        # what `delete -force` cannot see: the lock (and state) of a `runsc create` killed half way
        prefix = f"{pod.id}_sandbox:"
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.root):
                if name.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.root, name))

    @staticmethod
    async def _delete(runtime: OciRuntime, sandbox_id: str) -> None:
        try:
            await runtime.delete(sandbox_id, force=True)
        except NotFound:
            pass
        except KuasarError as err:
            log.warning("sandbox %s: runsc delete -force failed: %s", sandbox_id, err)
