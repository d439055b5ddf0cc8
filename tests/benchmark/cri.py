"""Pods through a real containerd 2.x and crictl, the way issues 17, 18 and 19 measured them.

Each start is one ``crictl run`` process (RunPodSandbox + CreateContainer + StartContainer over CRI),
against one private containerd whose CRI plugin has two kinds of handler:

- ``runc``: containerd's own podsandbox controller and one ``containerd-shim-runc-v2`` per pod (the
  baseline: its management plane is the shims);
- ``kuasar-<type>``: our sandboxer, reached over the Sandbox API as a ``[proxy_plugins]`` entry (its
  management plane is the sandboxer, its task server, the task front and helpers, as in
  :class:`kuasar.KuasarSide`).

containerd, ctr and crictl are not in the registries this project installs from; they are the ones the
critest kit builds from their public sources (tests/cri/README.md), found in ``$KUASAR_CRI_BIN``
(default ``/opt/kuasar-cri/bin``). The images are made here as OCI archives and imported with ``ctr``: the
pinned sandbox image holds kuasar_shared's pause program, the busybox image the host's static busybox, the
wasm image a WASI module. Pods use the node network (no CNI plugin runs, on either side), as in the rest of
this benchmark. Everything lives under the run's work directory and is removed by :meth:`CriNode.teardown`.
"""
from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import daemons
import procstats
import startsteps
from kuasar import REPO, SANDBOX_STEP, SLEEP_WAT, TASK_STEP, TOUCH64_WAT, KuasarSide, Profile, tool
from workload import Groups, Side

from kuasar_shared.pause import pause_elf

__all__ = ["BARE_STEP", "CRI_BIN", "CriImage", "CriNode", "CriShimSide", "CriKuasarSide", "missing_tools", "IMAGES"]

CRI_BIN = os.environ.get("KUASAR_CRI_BIN", "/opt/kuasar-cri/bin")
SANDBOX_IMAGE = "registry.k8s.io/pause:kbench"
_CRICTL_TIMEOUT_S = 300
_NAMESPACE = "k8s.io"
#: pause before each timed start of the step rounds
_SETTLE_S = 0.05
#: bare ``runc create && runc start`` of the spec our task server ran (:meth:`CriKuasarSide.engine_steps`)
BARE_STEP = "bare runc create + start, same spec"


@dataclass(frozen=True)
class CriImage:
    """An image made here: its reference, files (path -> bytes, or ``"->target"`` for a symlink), command."""

    ref: str
    files: Tuple[Tuple[str, Any], ...]
    command: Tuple[str, ...]


def _busybox() -> bytes:
    path = shutil.which("busybox")
    if path is None:
        raise RuntimeError("no busybox on PATH (Debian package busybox-static)")
    with open(path, "rb") as handle:
        return handle.read()


#: image name -> how to make it (made lazily: the busybox image reads the host's busybox)
IMAGES: Dict[str, Any] = {
    "pause": lambda: CriImage(SANDBOX_IMAGE, (("pause", pause_elf()),), ("/pause",)),
    "busybox": lambda: CriImage("docker.io/kbench/busybox:1", (("bin/busybox", _busybox()), ("bin/sleep", "->busybox"),
                                                               ("bin/sh", "->busybox")), ("/bin/sleep", "100000")),
    "wasm-sleep": lambda: CriImage("docker.io/kbench/wasm-sleep:1", (("sleep.wat", SLEEP_WAT.encode()),),
                                   ("/sleep.wat",)),
    "wasm-touch64": lambda: CriImage("docker.io/kbench/wasm-touch64:1", (("touch64.wat", TOUCH64_WAT.encode()),),
                                     ("/touch64.wat",)),
}


async def _run_quiet(argv: List[str]) -> int:
    """``argv`` with stdio on /dev/null, through asyncio's child watcher (this driver never reaps others')."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL)
    return await proc.wait()


def missing_tools(bin_dir: str = CRI_BIN) -> Optional[str]:
    """Why the CRI sides cannot run here, or None."""
    for name in ("containerd", "ctr", "containerd-shim-runc-v2", "crictl"):
        if not os.access(os.path.join(bin_dir, name), os.X_OK):
            return f"{bin_dir}/{name} missing (build it with the critest kit, tests/cri/README.md)"
    if shutil.which("runc") is None:
        return "runc missing"
    return None


def _blob(data: bytes) -> Tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def oci_archive(image: CriImage, arch: str) -> bytes:
    """An OCI image layout tar of ``image`` (one uncompressed layer), named for ``ctr images import``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, content in image.files:
            info = tarfile.TarInfo(path)
            if isinstance(content, str) and content.startswith("->"):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, content[2:], 0o777
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755
                tar.addfile(info, io.BytesIO(content))
    layer_digest, layer_data = _blob(layer.getvalue())
    config = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
              "config": {"Cmd": list(image.command),
                         "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]}}
    config_digest, config_data = _blob(json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest,
                           "size": len(config_data)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                            "size": len(layer_data)}]}
    manifest_digest, manifest_data = _blob(json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": len(manifest_data), "platform": {"architecture": arch, "os": "linux"},
        "annotations": {"io.containerd.image.name": image.ref,
                        "org.opencontainers.image.ref.name": image.ref.rsplit(":", 1)[1]}}]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        members = [("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                   ("index.json", json.dumps(index).encode())]
        members += [(f"blobs/sha256/{d.split(':')[1]}", data) for d, data in
                    ((layer_digest, layer_data), (config_digest, config_data), (manifest_digest, manifest_data))]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _go_arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


class CriNode:
    """One private containerd 2.x with the baseline handler and a handler per sandbox type, and crictl."""

    def __init__(self, work: str, types: Sequence[str], bin_dir: str = CRI_BIN) -> None:
        self.work = work
        self.bin_dir = bin_dir
        self.types = list(types)
        self.root = os.path.join(work, "containerd")
        self.sock = os.path.join(self.root, "containerd.sock")
        self.proc: Optional[subprocess.Popen] = None
        self._log: Any = None
        self._versions: Dict[str, str] = {}
        self.cgroup_parent = f"/kuasar-bench-cri-{os.getpid()}"  # two runs at once must not share it

    def sandboxer_socket(self, sandbox_type: str) -> str:
        return os.path.join(self.work, f"{sandbox_type}-sandboxer.sock")

    def config(self) -> str:
        runtimes = [f"""
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        runtime_path = "{self.bin_dir}/containerd-shim-runc-v2"
        sandboxer = "podsandbox"
        [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
          BinaryName = "{shutil.which('runc')}"
          Root = "{self.root}/runc-root"
          SystemdCgroup = false"""]
        proxies = []
        for sandbox_type in self.types:
            streaming = '\n        io_type = "streaming"' if sandbox_type == "vmm" else ""
            runtimes.append(f"""
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.kuasar-{sandbox_type}]
        runtime_type = "io.containerd.kuasar-{sandbox_type}.v1"
        sandboxer = "{sandbox_type}"
        snapshotter = "overlayfs"{streaming}""")
            proxies.append(f"""
  [proxy_plugins.{sandbox_type}]
    type = "sandbox"
    address = "{self.sandboxer_socket(sandbox_type)}\"""")
        return f"""version = 3
root = "{self.root}/root"
state = "{self.root}/state"
temp = "{self.root}/tmp"
imports = []

[grpc]
  address = "{self.sock}"

[plugins]
  [plugins.'io.containerd.internal.v1.opt']
    path = "{self.root}/opt"
  [plugins.'io.containerd.nri.v1.nri']
    disable = true
  [plugins.'io.containerd.cri.v1.images']
    snapshotter = "overlayfs"
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = "{SANDBOX_IMAGE}"
  [plugins.'io.containerd.cri.v1.runtime']
    enable_selinux = false
    disable_apparmor = true
    restrict_oom_score_adj = true
    [plugins.'io.containerd.cri.v1.runtime'.containerd]
      default_runtime_name = "runc"{''.join(runtimes)}
    [plugins.'io.containerd.cri.v1.runtime'.cni]
      conf_dir = "{self.root}/cni"

[proxy_plugins]{''.join(proxies)}
"""

    async def setup(self) -> None:
        reason = missing_tools(self.bin_dir)
        if reason:
            raise RuntimeError(reason)
        for sub in ("root", "state", "tmp", "opt", "cni", "pods"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        with open(os.path.join(self.root, "config.toml"), "w") as handle:
            handle.write(self.config())
        with open(os.path.join(self.root, "crictl.yaml"), "w") as handle:
            handle.write(f"runtime-endpoint: unix://{self.sock}\nimage-endpoint: unix://{self.sock}\n"
                         f"timeout: {_CRICTL_TIMEOUT_S}\n")
        self._log = open(os.path.join(self.root, "containerd.log"), "wb")
        # containerd runs containerd-shim-kuasar-<type>-v1 -info from its PATH: our console scripts' directory
        scripts = os.path.dirname(tool("runc-sandboxer") or tool("wasm-sandboxer") or "/usr/bin/x")
        env = {**os.environ, "PATH": f"{self.bin_dir}:{scripts}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:"
                                     "/sbin:/bin"}
        self.proc = subprocess.Popen([os.path.join(self.bin_dir, "containerd"), "--config",
                                      os.path.join(self.root, "config.toml")], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=env, start_new_session=True)
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited: {self.diagnostics()}")
            if os.path.exists(self.sock) and (await self._run(["crictl", "info"], check=False))[0] == 0:
                break
            await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"containerd's CRI did not answer within 60 s: {self.diagnostics()}")
        for name, make in IMAGES.items():
            archive = os.path.join(self.root, f"{name}.tar")
            with open(archive, "wb") as handle:
                handle.write(oci_archive(make(), _go_arch()))
            await self._run(["ctr", "--address", self.sock, "-n", _NAMESPACE, "images", "import", archive])

    async def _run(self, argv: List[str], check: bool = True, timeout: float = _CRICTL_TIMEOUT_S) -> Tuple[int, str]:
        binary = os.path.join(self.bin_dir, argv[0])
        if argv[0] == "crictl":
            argv = [argv[0], "--config", os.path.join(self.root, "crictl.yaml")] + argv[1:]
        proc = await asyncio.create_subprocess_exec(binary, *argv[1:], stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"{' '.join(argv)}: no answer within {timeout} s") from None
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}: {err.decode(errors='replace').strip()}")
        return proc.returncode or 0, out.decode(errors="replace")

    async def run_pod(self, handler: str, name: str, image: CriImage) -> float:
        """``crictl run`` of one pod named ``name`` with one container; returns how long it took (ms)."""
        pod = {"metadata": {"name": name, "namespace": "kbench", "uid": f"uid-{name}", "attempt": 1},
               "log_directory": os.path.join(self.root, "pods", name),
               "linux": {"cgroup_parent": self.cgroup_parent,
                         "security_context": {"namespace_options": {"network": 2}}}}
        container = {"metadata": {"name": "sleeper"}, "image": {"image": image.ref}, "command": list(image.command),
                     "log_path": "sleeper.log", "linux": {}}
        pod_file = os.path.join(self.root, "pods", f"{name}.pod.json")
        ctr_file = os.path.join(self.root, "pods", f"{name}.ctr.json")
        with open(pod_file, "w") as handle:
            json.dump(pod, handle)
        with open(ctr_file, "w") as handle:
            json.dump(container, handle)
        t0 = time.perf_counter()
        await self._run(["crictl", "run", "--runtime", handler, "--no-pull", ctr_file, pod_file])
        return (time.perf_counter() - t0) * 1000

    async def pod_ids(self, names: Sequence[str]) -> List[str]:
        _, out = await self._run(["crictl", "pods", "-o", "json"])
        wanted = set(names)
        return [p["id"] for p in json.loads(out).get("items", []) if p["metadata"]["name"] in wanted]

    async def remove_pods(self, names: Sequence[str]) -> None:
        """``crictl rmp -f`` of the named pods, then their files."""
        ids = await self.pod_ids(names)
        if ids:
            await self._run(["crictl", "rmp", "-f", *ids])
        for name in names:
            for suffix in (".pod.json", ".ctr.json"):
                try:
                    os.unlink(os.path.join(self.root, "pods", name + suffix))
                except FileNotFoundError:
                    pass
            shutil.rmtree(os.path.join(self.root, "pods", name), ignore_errors=True)

    def shims(self) -> List[int]:
        """The shims this containerd started (their command line carries its exact address)."""
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                argv = procstats.cmdline(int(entry))
                if argv and argv[0].endswith("containerd-shim-runc-v2") and self.sock in argv:
                    found.append(int(entry))
        return found

    def versions(self) -> Dict[str, str]:
        """containerd's and crictl's versions (asked once)."""
        if not self._versions:
            for name in ("containerd", "crictl"):
                done = subprocess.run([os.path.join(self.bin_dir, name), "--version"], capture_output=True,
                                      text=True)
                self._versions[name] = (done.stdout or done.stderr).strip()
        return dict(self._versions)

    def diagnostics(self) -> str:
        return daemons.log_tail(self._log, 3000)

    async def teardown(self) -> None:
        """Every pod removed, containerd stopped by pid, leftover shims killed by pid, mounts under the work dir gone
        (a pod whose start failed half-way may leave its sandbox's)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                await self._run(["crictl", "rmp", "-fa"], check=False, timeout=120)
            finally:
                await daemons.terminate(self.proc)
        for pid in self.shims():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        await daemons.kill_below(self.work)
        daemons.unmount_below(self.work)  # the sides' mounts too
        if self._log is not None:
            self._log.close()


class CriShimSide(Side):
    """The baseline through CRI: containerd's podsandbox controller, one containerd-shim-runc-v2 per pod."""

    name = "containerd-shim-runc-v2 (CRI)"

    def __init__(self, node: CriNode) -> None:
        self.node = node
        self._counter = 0
        self._image: Optional[CriImage] = None

    async def setup(self) -> None:
        self._image = IMAGES["busybox"]()

    async def teardown(self) -> None:
        """The node removes every pod when it stops."""

    async def start_pod(self) -> str:
        assert self._image is not None
        self._counter += 1
        name = f"shim-{self._counter}"
        self.last_steps = {"crictl run": await self.node.run_pod("runc", name, self._image)}
        return name

    async def remove_pods(self, pods: Sequence[str]) -> None:
        await self.node.remove_pods(pods)

    def groups(self) -> Groups:
        shims = self.node.shims()
        tree = procstats.children_map()
        pause = [pid for shim in shims for pid in procstats.descendants(shim, tree)
                 if procstats.comm(pid) == "pause"]
        daemon = [self.node.proc.pid] if self.node.proc is not None else []
        return Groups(management={"containerd-shim-runc-v2": shims}, daemon={"containerd": daemon},
                      per_pod={"pause": pause})

    def versions(self) -> Dict[str, str]:
        return self.node.versions()

    def diagnostics(self) -> str:
        return self.node.diagnostics()


class CriKuasarSide(KuasarSide):
    """One of our sandboxers, as a ``[proxy_plugins]`` sandboxer of the node's containerd."""

    def __init__(self, profile: Profile, work: str, node: CriNode) -> None:
        super().__init__(profile, work, os.path.join(work, "images"))
        self.node = node
        self.name = f"kuasar-{profile.sandbox_type}{'-' + profile.variant if profile.variant else ''} (CRI)"
        self.listen = node.sandboxer_socket(profile.sandbox_type)
        self.cgroup_parent = f"{node.cgroup_parent}-{profile.sandbox_type}"  # the Engine's pods (engine_steps)
        self._image = IMAGES[profile.image if profile.image in IMAGES else "busybox"]()

    async def start_pod(self) -> str:
        self._counter += 1
        name = f"{self.profile.sandbox_type}{self.profile.variant}-{self._counter}"
        self.last_steps = {"crictl run": await self.node.run_pod(f"kuasar-{self.profile.sandbox_type}", name,
                                                                  self._image)}
        self._pods[name] = None  # type: ignore[assignment]  # KuasarSide.teardown removes what is listed here
        return name

    async def remove_pods(self, pods: Sequence[str]) -> None:
        await self.node.remove_pods(pods)
        for pod in pods:
            self._pods.pop(pod, None)

    async def engine_steps(self, rounds: int) -> Dict[str, Any]:
        """``rounds`` serial pod + container starts made the way containerd makes them (kuasar-ctl's Engine:
        Sandbox API Create/Start, then task Create/Start), on the socket of the sandboxer that served this
        side's CRI run, each call timed on the client: the steps issue 19 sets targets for, measured on the
        same daemons as the memory. Each round then runs bare ``runc create && runc start`` of the very spec
        the task server gave runc (a second container in the same pod). One round before them is not
        counted (first use of each code path)."""
        rootfs = os.path.join(self.images, "busybox")
        if not os.path.isdir(rootfs):
            await asyncio.to_thread(subprocess.run, ["sh", os.path.join(REPO, "hack", "make-busybox-rootfs.sh"),
                                                     rootfs], check=True, capture_output=True)
        assert self.engine is not None
        load = list(os.getloadavg())
        bare_root = os.path.join(self.work, "bare-root")
        rows: List[Dict[str, float]] = []
        pods: List[str] = []
        bare: List[Tuple[str, str]] = []
        try:
            for index in range(rounds + 1):
                await asyncio.sleep(_SETTLE_S)
                pods.append(await KuasarSide.start_pod(self))
                row = dict(self.last_steps)
                with open(os.path.join(self.engine.store.bundle_dir(self.last_container), "config.json")) as handle:
                    placed = json.load(handle)
                await asyncio.sleep(_SETTLE_S)  # the container's own start-up is not bare runc's load
                bare.append((f"bare-{index}", os.path.join(self.work, "bare", str(index))))
                timed = await startsteps.bare_runc(bare[-1][1], placed, rootfs, bare_root, bare[-1][0], _run_quiet)
                row[BARE_STEP] = timed["bare runc create"] + timed["bare runc start"]
                rows.append(row)
        finally:
            for bare_id, bundle in bare:
                await startsteps.remove_bare(bare_root, bare_id, bundle, _run_quiet)
            await KuasarSide.remove_pods(self, pods)
        rows = rows[1:]
        return {"rounds": len(rows), "loadavg_before": load,
                "p50_ms": {step: procstats.percentile([row[step] for row in rows], 50)
                           for step in (SANDBOX_STEP, TASK_STEP, BARE_STEP)}, "samples_ms": rows}

    def versions(self) -> Dict[str, str]:
        return {**super().versions(), **self.node.versions()}

    def diagnostics(self) -> str:
        return super().diagnostics() + "\n--- containerd ---\n" + self.node.diagnostics()
