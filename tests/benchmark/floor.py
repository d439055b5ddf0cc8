"""Where each MB of a sandbox type's floor goes: per live process and per imported package.

Two views, both of the real programs:

* :func:`process_memory` reads ``/proc/<pid>/smaps`` of a running management process and sums PSS by
  mapping: the interpreter (``python3.11`` / ``libpython``), each extension module (grpc's ``cygrpc``,
  protobuf's ``upb`` ``_message``, ...), other shared libraries, the Python heap (``[heap]`` and
  anonymous mappings: objects, code, descriptor pools) and the rest; plus the smaps_rollup totals
  (private dirty is what the process alone costs).
* :func:`import_profile` starts a fresh interpreter that imports a program's main module and reports
  what the import costs in private dirty memory (smaps_rollup; clean file pages are shared with every
  other process of the same installation, so they depend on what else runs), stage by stage: the
  standard library layers, protobuf and a generated descriptor module (the descriptor pool), grpc,
  our ttrpc, then the program, so that each MB has a name; plus the module count, the CPU time and
  the slowest imports (``-X importtime``, cumulative microseconds).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any, Dict, List

__all__ = ["process_memory", "import_profile", "PROGRAMS"]

#: the main module of each management program, by the name the benchmark gives its process
PROGRAMS = {
    "runc-sandboxer": "kuasar_runc_sandboxer.main",
    "runc-task": "kuasar_runc_task.main",
    "quark-sandboxer": "kuasar_quark_sandboxer.main",
    "quark-task": "kuasar_quark_sandboxer.task",
    "wasm-sandboxer": "kuasar_wasm_sandboxer.main",
    "wasm-task": "kuasar_wasm_sandboxer.task",
    "vmm-sandboxer": "kuasar_vmm_sandboxer.main",
    "vmm-task-relay": "kuasar_vmm_sandboxer.relay.main",
}

_HEADER = re.compile(r"^[0-9a-f]+-[0-9a-f]+ ")


def _mapping_group(path: str) -> str:
    if not path or path.startswith("[anon") or path in ("[heap]", "[stack]"):
        return "heap and anonymous (Python objects, code, descriptor pools, arenas)" if path != "[stack]" \
            else "stacks"
    name = os.path.basename(path)
    if name.startswith(("python3", "libpython")):
        return "interpreter (python3.11 binary / libpython)"
    if "cygrpc" in name or "grpc" in path:
        return "grpc (cygrpc extension)"
    if "google/_upb" in path or "protobuf" in path:
        return "protobuf (upb extension)"
    if name.startswith(("libc.", "libc-", "ld-linux", "libm.", "libpthread", "libdl", "libgcc", "libstdc++")):
        return "libc, libm, libstdc++"
    if name.endswith(".so") or ".so." in name:
        return "other extension modules and libraries"
    return "other files (" + name + ")" if not path.startswith("[") else path


def process_memory(pid: int) -> Dict[str, Any]:
    """PSS of ``pid`` by mapping group, plus its smaps_rollup totals (KiB); empty when it is gone."""
    groups: Dict[str, int] = {}
    current = ""
    try:
        with open(f"/proc/{pid}/smaps") as handle:
            for line in handle:
                if _HEADER.match(line):
                    parts = line.split(None, 5)
                    current = _mapping_group(parts[5].strip() if len(parts) > 5 else "")
                elif line.startswith("Pss:"):
                    groups[current] = groups.get(current, 0) + int(line.split()[1])
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            rollup = {parts[0].rstrip(":"): int(parts[1]) for parts in (line.split() for line in handle)
                      if len(parts) == 3 and parts[2] == "kB"}
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return {"pss_by_mapping_kb": dict(sorted(groups.items(), key=lambda item: -item[1])),
            "rollup_kb": {k: rollup[k] for k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Private_Dirty",
                                                  "Private_Clean", "Shared_Dirty", "Shared_Clean") if k in rollup}}


_PROBE = r"""
import json, sys, time
def private_kb():
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(l.split()[1]) for l in f if l.startswith("Private_Dirty:"))
stages, last, seen = [], private_kb(), set(sys.modules)
t0 = time.process_time()
for name in sys.argv[1:]:
    __import__(name)
    now = private_kb()
    new = set(sys.modules) - seen
    seen |= new
    stages.append({"import": name, "private_kb": now - last, "modules": len(new)})
    last = now
print(json.dumps({"stages": stages, "private_kb": last, "modules": len(sys.modules),
                  "import_cpu_ms": round((time.process_time() - t0) * 1000, 1),
                  "loaded": sorted(m for m in ("grpc", "grpc.aio", "google.protobuf", "asyncio", "ssl", "argparse",
                                               "concurrent.futures", "ctypes", "logging", "json", "dataclasses",
                                               "typing", "enum", "re", "tempfile", "shutil", "subprocess")
                                   if sys.modules.get(m) is not None)}))
"""

#: the shared layers a program may pull in, imported one after another before the program itself so
#: that each one's private memory is its own line (a module already imported costs nothing later)
STAGES = ("re", "typing", "dataclasses", "enum", "json", "logging", "argparse", "subprocess", "ctypes", "ssl",
          "asyncio", "concurrent.futures", "google.protobuf.message", "google.protobuf.empty_pb2",
          "kuasar_shared.api.containerd.runtime.task.v3.shim_pb2", "grpc", "grpc.aio", "kuasar_shared.ttrpc")


def import_profile(module: str, python: str = sys.executable, top: int = 12) -> Dict[str, Any]:
    """What importing ``module`` costs a fresh interpreter: private memory by stage (:data:`STAGES`, then
    the module itself; a stage the module never imports is dropped and its cost is not counted), the
    modules and CPU time, and the slowest imports."""
    alone = subprocess.run([python, "-c", _PROBE, module], capture_output=True, text=True, check=False)
    if alone.returncode:
        return {"error": alone.stderr.strip().splitlines()[-1] if alone.stderr.strip() else "probe failed"}
    used = [stage for stage in STAGES if stage in json.loads(alone.stdout)["loaded"] or
            stage.startswith(("google.protobuf", "kuasar_shared.api")) and "google.protobuf" in
            json.loads(alone.stdout)["loaded"] or stage == "kuasar_shared.ttrpc" and "google.protobuf" in
            json.loads(alone.stdout)["loaded"]]
    if "ssl" not in json.loads(alone.stdout)["loaded"]:
        used.insert(0, "kuasar_shared.daemon.notls")  # the program keeps ssl out before anything else
    probe = subprocess.run([python, "-c", _PROBE, *used, module], capture_output=True, text=True, check=False)
    if probe.returncode:
        return {"error": probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "probe failed"}
    result: Dict[str, Any] = json.loads(probe.stdout)
    result["import_cpu_ms"] = json.loads(alone.stdout)["import_cpu_ms"]
    timed = subprocess.run([python, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                           check=False)
    rows: List[tuple[int, str]] = []
    for line in timed.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line[len("import time:"):].split("|")
            if name.strip().count(" ") == 0:
                rows.append((int(cumulative), name.rstrip()))
    result["slowest_imports_us"] = [{"module": name.strip(), "depth": (len(name) - len(name.lstrip())) // 2,
                                     "cumulative_us": us} for us, name in sorted(rows, reverse=True)[:top]]
    return result
