"""The README's demos of the types whose first task server is a fork of the sandboxer (runc, wasm, quark) run
their pods and leave nothing running: their clean-up finds that forked server although its command line is
the sandboxer's, not ``<type>-task``'s (the demos left it running from the fork's introduction until 2026-12-05)."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest
from support import REPO, running

DEMOS = {"runc": "examples/demo.sh", "wasm": "examples/wasm/demo.sh", "quark": "examples/quark/demo.sh"}


def _naming(prefix: str) -> dict[int, str]:
    """Live processes (not zombies) whose command line names a path starting with ``prefix``."""
    found = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                argv = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if prefix in argv and running(int(entry)):
            found[int(entry)] = argv
    return found


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(DEMOS))
def test_demo_runs_its_pod_and_leaves_no_process_or_directory(kind: str) -> None:
    prefix = f"/tmp/kuasar-{kind}-demo."
    dirs_before, procs_before = set(glob.glob(prefix + "*")), set(_naming(prefix))
    env = dict(os.environ, PATH=os.path.join(REPO, ".venv", "bin") + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["sh", os.path.join(REPO, DEMOS[kind])], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert set(glob.glob(prefix + "*")) <= dirs_before
    left = {pid: argv for pid, argv in _naming(prefix).items() if pid not in procs_before}
    assert not left, f"the {kind} demo left processes running: {left}"
