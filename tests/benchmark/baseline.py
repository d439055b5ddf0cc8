"""The baseline: Debian's containerd 1.6 + containerd-shim-runc-v2, one shim per pod, on this machine.

:class:`Containerd` runs a private containerd (config version 2, root/state/sockets in a temp dir,
CRI plugin disabled). It is needed only so that shims can publish their events to it (and for
the ``ctr run`` reference).

:class:`ShimSide` drives shims exactly as containerd's runtime v2 manager does (runtime/v2/binary.go
and shim/util.go in containerd 1.6): ``containerd-shim-runc-v2 -namespace <ns> -address <grpc>
-publish-binary <containerd> -id <id> start`` with the bundle as cwd, ``TTRPC_ADDRESS``,
``GRPC_ADDRESS``, ``NAMESPACE`` and ``GOMAXPROCS=2`` in the environment and a ``log`` FIFO in the
bundle; the shim prints its ttrpc address. Then task Create, Start and Connect over our own
``kuasar_shared.ttrpc`` Client — the client code ours uses too — with the same busybox rootfs
(overlay), the same CRI-built OCI spec (with fresh namespaces: there is no pod to join) and the
same FIFO stdio, copied into a CRI log in-process by kuasar-ctl's LogCopier (as the Engine does
with ``inline_logs``, and containerd itself).

:class:`CtrSide` is the second reference: ``ctr run -d`` end to end (snapshotter, metadata, shim).
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import daemons
import procstats
from workload import Groups, Side

from google.protobuf import empty_pb2

from kuasar_shared.api.containerd.runtime.task.v3 import shim_pb2 as task_pb2
from kuasar_shared.api.containerd.types import mount_pb2
from kuasar_shared.ctl import host, logwriter
from kuasar_shared.ctl.config import ContainerConfig
from kuasar_shared.ctl.io import make_fifos
from kuasar_shared.ctl.spec import SpecInputs, build_container_spec
from kuasar_shared.errors import KuasarError, NotFound, Unavailable
from kuasar_shared.statefiles import write_json_atomic
from kuasar_shared.ttrpc import Client

import kuasar

__all__ = ["Containerd", "ShimSide", "CtrSide", "SHIM_BINARY", "available"]

SHIM_BINARY = "containerd-shim-runc-v2"
TASK_V2 = "containerd.task.v2.Task"
IMAGE_NAME = "docker.io/library/kuasar-bench-busybox:latest"
_CONFIG = """version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{sock}"
[debug]
  level = "warn"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""


def available() -> bool:
    return all(shutil.which(b) for b in ("containerd", "ctr", SHIM_BINARY, "runc"))


def _version(*argv: str) -> str:
    out = subprocess.run(list(argv), capture_output=True, text=True, check=False)
    lines = [line.strip() for line in (out.stdout or out.stderr).splitlines() if line.strip()]
    if lines and lines[0].endswith(":"):  # shims print "<path>:" and then "Version: ..." lines
        lines = lines[1:]
    return " ".join(lines[:2]) or "?"


class Containerd:
    """A private containerd daemon. :meth:`start`, then :meth:`stop` (always)."""

    def __init__(self, work: str) -> None:
        self.work = work
        self.sock = os.path.join(work, "c.sock")
        self.ttrpc = self.sock + ".ttrpc"
        self.binary = shutil.which("containerd") or "containerd"
        self.proc: Optional[subprocess.Popen] = None
        self._log: Any = None

    async def start(self) -> None:
        for sub in ("root", "state", "opt"):
            os.makedirs(os.path.join(self.work, sub), exist_ok=True)
        config = os.path.join(self.work, "config.toml")
        with open(config, "w") as f:
            f.write(_CONFIG.format(root=os.path.join(self.work, "root"), state=os.path.join(self.work, "state"),
                                   sock=self.sock, opt=os.path.join(self.work, "opt")))
        self._log = open(os.path.join(self.work, "containerd.log"), "wb")
        self.proc = subprocess.Popen([self.binary, "--config", config], stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for _ in range(400):
            if os.path.exists(self.sock) and os.path.exists(self.ttrpc):
                return
            if self.proc.poll() is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"containerd did not start; see {self._log.name}")

    async def ctr(self, namespace: str, *args: str, check: bool = True) -> str:
        proc = await asyncio.create_subprocess_exec("ctr", "-a", self.sock, "-n", namespace, *args,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        if check and proc.returncode:
            raise RuntimeError(f"ctr {' '.join(args)}: {out.decode().strip()}")
        return out.decode()

    async def stop(self) -> None:
        if self.proc is not None:
            await daemons.terminate(self.proc)
        if self._log is not None:
            self._log.close()


@dataclass
class ShimPod:
    id: str
    bundle: str
    pod_dir: str
    address: str = ""
    shim_pid: int = 0
    log_fd: int = -1
    client: Optional[Client] = None
    logger: Optional["asyncio.Future[None]"] = None


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass


class ShimSide(Side):
    """One containerd-shim-runc-v2 per pod, started with the shim v2 ``start`` protocol."""

    name = "containerd-shim-runc-v2"

    def __init__(self, containerd: Containerd, work: str, images: str, namespace: str = "kuasar-bench") -> None:
        self.containerd = containerd
        self.work = work
        self.images = images
        self.namespace = namespace
        self.cgroup_parent = "/kuasar-bench-shim"
        self.shim = shutil.which(SHIM_BINARY) or SHIM_BINARY
        self._pods: Dict[str, ShimPod] = {}
        self._transient = procstats.CpuTimes()
        self._ctr = ContainerConfig(name="sleeper", image="busybox", command=("/bin/sleep", "100000"),
                                    log_path="sleeper.log")
        self._env = dict(os.environ, GOMAXPROCS="2", TTRPC_ADDRESS=containerd.ttrpc,
                         GRPC_ADDRESS=containerd.sock, NAMESPACE=namespace)

    async def setup(self) -> None:
        os.makedirs(os.path.join(self.work, "bundles", self.namespace), exist_ok=True)
        os.makedirs(os.path.join(self.work, "pods"), exist_ok=True)

    def versions(self) -> Dict[str, str]:
        return {"containerd": _version("containerd", "--version"), SHIM_BINARY: _version(self.shim, "-v"),
                "runc": _version("runc", "--version")}

    def _spec(self, pod: ShimPod) -> Dict[str, Any]:
        config = kuasar.pod_config(len(self._pods), os.path.join(self.work, "logs"), self.cgroup_parent)
        host.write_sandbox_files(pod.pod_dir, config, config.hostname)
        inputs = SpecInputs(container_id=pod.id, sandbox_id=pod.id, sandbox_pid=0, image_name="busybox",
                            oom_score_adj_floor=host.own_oom_score_adj(), swap_accounting=host.swap_accounting(),
                            extra_mounts=host.sandbox_file_mounts(pod.pod_dir, False))
        spec = build_container_spec(self._ctr, config, inputs)
        spec["linux"]["namespaces"] = [{"type": ns["type"]} for ns in spec["linux"]["namespaces"]]
        spec["hostname"] = config.hostname
        return spec

    async def start_pod(self) -> ShimPod:
        t0 = time.perf_counter()
        pod_id = secrets.token_hex(32)
        pod = ShimPod(id=pod_id, bundle=os.path.join(self.work, "bundles", self.namespace, pod_id),
                      pod_dir=os.path.join(self.work, "pods", pod_id))
        self._pods[pod_id] = pod
        for sub in ("fs", "work"):
            os.makedirs(os.path.join(pod.pod_dir, sub), mode=0o711)
        os.makedirs(os.path.join(pod.bundle, "rootfs"), mode=0o711)
        write_json_atomic(os.path.join(pod.bundle, "config.json"), self._spec(pod))
        paths = make_fifos(os.path.join(pod.pod_dir, "io"), pod_id)
        copier = await logwriter.LogCopier.open(os.path.join(pod.pod_dir, "sleeper.log"),
                                                [paths.stdout, paths.stderr])
        pod.logger = asyncio.ensure_future(copier.run())
        # containerd's openShimLog: the shim's stderr goes to <bundle>/log, which containerd reads
        os.mkfifo(os.path.join(pod.bundle, "log"), 0o700)
        pod.log_fd = os.open(os.path.join(pod.bundle, "log"), os.O_RDONLY | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(pod.log_fd, _drain, pod.log_fd)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t1 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            self.shim, "-namespace", self.namespace, "-address", self.containerd.sock,
            "-publish-binary", self.containerd.binary, "-id", pod_id, "start",
            cwd=pod.bundle, env=self._env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self._transient = self._transient + procstats.CpuTimes(
            after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 0.0)
        if proc.returncode:
            raise RuntimeError(f"{SHIM_BINARY} start: {out.decode().strip()}")
        pod.address = out.decode().strip()
        t2 = time.perf_counter()
        pod.client = await Client.connect(pod.address)
        rootfs = mount_pb2.Mount(type="overlay", source="overlay", options=host.overlay_options(
            os.path.join(self.images, "busybox"), os.path.join(pod.pod_dir, "fs"), os.path.join(pod.pod_dir, "work")))
        await self._call(pod, "Create", task_pb2.CreateTaskRequest(
            id=pod_id, bundle=pod.bundle, rootfs=[rootfs], stdout=paths.stdout, stderr=paths.stderr),
            task_pb2.CreateTaskResponse)
        await self._call(pod, "Start", task_pb2.StartRequest(id=pod_id), task_pb2.StartResponse)
        connected = await self._call(pod, "Connect", task_pb2.ConnectRequest(id=pod_id), task_pb2.ConnectResponse)
        pod.shim_pid = connected.shim_pid
        t3 = time.perf_counter()
        self.last_steps = {"bundle, spec, IO": (t1 - t0) * 1000, "shim start (binary)": (t2 - t1) * 1000,
                           "task Create+Start (ttrpc)": (t3 - t2) * 1000}
        return pod

    async def _call(self, pod: ShimPod, method: str, request: Any, response_type: Any, timeout: float = 30.0) -> Any:
        assert pod.client is not None
        return await pod.client.call(TASK_V2, method, request, response_type, timeout=timeout,
                                     metadata={"containerd-namespace-ttrpc": self.namespace})

    def take_transient_cpu(self) -> procstats.CpuTimes:
        taken, self._transient = self._transient, procstats.CpuTimes()
        return taken

    async def _remove(self, pod: ShimPod) -> None:
        if pod.client is not None:
            try:
                await self._call(pod, "Kill", task_pb2.KillRequest(id=pod.id, signal=signal.SIGKILL, all=True),
                                 empty_pb2.Empty)
                await self._call(pod, "Wait", task_pb2.WaitRequest(id=pod.id), task_pb2.WaitResponse)
                await self._call(pod, "Delete", task_pb2.DeleteRequest(id=pod.id), task_pb2.DeleteResponse)
            except NotFound:
                pass
            try:
                await self._call(pod, "Shutdown", task_pb2.ShutdownRequest(id=pod.id),
                                 empty_pb2.Empty, 10.0)
            except (Unavailable, KuasarError):
                pass
            await pod.client.close()
        for _ in range(200):
            if not pod.shim_pid or procstats.is_zombie(pod.shim_pid):
                break
            await asyncio.sleep(0.02)
        else:
            os.kill(pod.shim_pid, signal.SIGKILL)
        if pod.logger is not None:
            try:
                await asyncio.wait_for(asyncio.shield(pod.logger), 2.0)
            except asyncio.TimeoutError:
                pod.logger.cancel()
                await asyncio.gather(pod.logger, return_exceptions=True)
        if pod.log_fd >= 0:
            asyncio.get_running_loop().remove_reader(pod.log_fd)
            os.close(pod.log_fd)
        host.unmount_below(pod.bundle)
        shutil.rmtree(pod.bundle, ignore_errors=True)
        shutil.rmtree(pod.pod_dir, ignore_errors=True)
        if pod.address.startswith("unix://") and os.path.exists(pod.address[len("unix://"):]):
            os.unlink(pod.address[len("unix://"):])
        self._pods.pop(pod.id, None)

    async def remove_pods(self, pods: Sequence[ShimPod]) -> None:
        await asyncio.gather(*(self._remove(p) for p in pods))

    def groups(self) -> Groups:
        shims = [p.shim_pid for p in self._pods.values() if p.shim_pid and not procstats.is_zombie(p.shim_pid)]
        daemon = [self.containerd.proc.pid] if self.containerd.proc is not None else []
        return Groups(management={SHIM_BINARY: shims}, daemon={"containerd": daemon})

    async def teardown(self) -> None:
        await self.remove_pods(list(self._pods.values()))


def build_oci_archive(rootfs: str, path: str) -> None:
    """An OCI image layout tarball (one uncompressed layer) of ``rootfs``, named :data:`IMAGE_NAME`."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(rootfs)):
            if not name.startswith("."):
                tar.add(os.path.join(rootfs, name), arcname=name)
    blobs: Dict[str, bytes] = {}

    def blob(data: bytes, media_type: str) -> Dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_desc = blob(layer.getvalue(), "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                         "Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    config_desc = blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json")
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": config_desc, "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": IMAGE_NAME,
                                    "org.opencontainers.image.ref.name": "latest"}
    manifest_desc["platform"] = {"architecture": "amd64", "os": "linux"}
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps(index).encode()}
    files.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


class CtrSide(Side):
    """``ctr run -d --null-io`` end to end: containerd's client, snapshotter, metadata and one shim."""

    name = "ctr run -d"

    def __init__(self, containerd: Containerd, work: str, images: str, namespace: str = "kuasar-bench-ctr") -> None:
        self.containerd = containerd
        self.work = work
        self.images = images
        self.namespace = namespace
        self._ids: List[str] = []

    async def setup(self) -> None:
        os.makedirs(self.work, exist_ok=True)
        archive = os.path.join(self.work, "busybox-oci.tar")
        await asyncio.to_thread(build_oci_archive, os.path.join(self.images, "busybox"), archive)
        await self.containerd.ctr(self.namespace, "images", "import", archive)

    def versions(self) -> Dict[str, str]:
        return {"ctr": _version("ctr", "--version")}

    async def start_pod(self) -> str:
        ctr_id = "bench-" + secrets.token_hex(8)
        self._ids.append(ctr_id)
        await self.containerd.ctr(self.namespace, "run", "-d", "--null-io", "--cgroup", f"/kuasar-bench-ctr/{ctr_id}",
                                  IMAGE_NAME, ctr_id, "/bin/sleep", "100000")
        return ctr_id

    async def _remove(self, ctr_id: str) -> None:
        await self.containerd.ctr(self.namespace, "task", "rm", "-f", ctr_id, check=False)
        await self.containerd.ctr(self.namespace, "containers", "rm", ctr_id, check=False)
        self._ids.remove(ctr_id)

    async def remove_pods(self, pods: Sequence[str]) -> None:
        await asyncio.gather(*(self._remove(c) for c in pods))

    def groups(self) -> Groups:
        tree = procstats.children_map()
        shims = [pid for pid in tree.get(os.getpid(), []) + procstats.descendants(os.getpid(), tree)
                 if procstats.comm(pid) == "containerd-shim" and
                 f"-namespace\0{self.namespace}" in "\0".join(procstats.cmdline(pid))]
        daemon = [self.containerd.proc.pid] if self.containerd.proc is not None else []
        return Groups(management={SHIM_BINARY: sorted(set(shims))}, daemon={"containerd": daemon})

    async def teardown(self) -> None:
        await self.remove_pods(list(self._ids))
        await self.containerd.ctr(self.namespace, "images", "rm", IMAGE_NAME, check=False)
