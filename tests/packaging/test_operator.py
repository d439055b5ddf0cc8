"""Operator experience (issue 6, item 6): every console script answers --version, and kuasar-ctl
names the unit to look at when a sandboxer socket is missing."""
from __future__ import annotations

import sys
from pathlib import Path

from rpmroot import REPO, run

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

VENV_BIN = Path(sys.executable).parent


def console_scripts() -> list:
    scripts = []
    for pyproject in sorted(REPO.glob("*/pyproject.toml")):
        scripts += sorted(tomllib.loads(pyproject.read_text()).get("project", {}).get("scripts", {}))
    return scripts


def test_every_console_script_has_version() -> None:
    failures = []
    scripts = console_scripts()
    assert "kuasar-ctl" in scripts and "runc-sandboxer" in scripts
    for script in scripts:
        flag = "-v" if script.startswith("containerd-shim-") else "--version"
        proc = run(str(VENV_BIN / script), flag, check=False)
        if proc.returncode != 0 or not proc.stdout.strip():
            failures.append("%s %s: rc=%d %s" % (script, flag, proc.returncode, proc.stderr.strip()[-200:]))
    assert not failures, "\n".join(failures)


def test_kuasar_ctl_names_the_unit_of_a_missing_socket(tmp_path: Path) -> None:
    for sandbox_type in ("runc", "vmm"):
        proc = run(str(VENV_BIN / "kuasar-ctl"), "-s", sandbox_type, "--root", str(tmp_path / "ctl"),
                   "--endpoint", str(tmp_path / "absent.sock"), "runp", str(REPO / "examples" / "pod.yaml"),
                   check=False)
        assert proc.returncode == 1
        assert "absent.sock does not exist" in proc.stderr
        assert "is kuasar-%s running? try: systemctl status kuasar-%s" % (sandbox_type, sandbox_type) in proc.stderr
