"""kuasar-ctl is an optional part of kuasar-shared: without PyYAML (the extra ``ctl``) it says what to
install, and sandbox-type packages add their subcommands through the ``kuasar.ctl`` entry-point group."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kuasar_shared.ctl.cli import build_parser
from kuasar_shared.ctl.plugins import ENTRY_POINT_GROUP

REPO = Path(__file__).resolve().parents[3]
#: run kuasar-ctl's entry point in an interpreter where ``import yaml`` fails
WITHOUT_YAML = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "yaml" or name.startswith("yaml."):
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
from kuasar_shared.ctl.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _ctl_without_yaml(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", WITHOUT_YAML, "--root", str(tmp_path / "ctl"),
                           "--endpoint", str(tmp_path / "absent.sock"), *argv],
                          capture_output=True, text=True, timeout=60)


def test_a_yaml_file_without_pyyaml_names_the_extra(tmp_path: Path) -> None:
    proc = _ctl_without_yaml(tmp_path, "runp", str(REPO / "examples" / "pod.yaml"))
    assert proc.returncode == 1, proc.stderr
    assert "pod.yaml: reading YAML needs PyYAML" in proc.stderr
    assert "kuasar-shared[ctl]" in proc.stderr


def test_commands_without_yaml_files_run_without_pyyaml(tmp_path: Path) -> None:
    proc = _ctl_without_yaml(tmp_path, "pods", "-q")
    assert proc.returncode == 0, proc.stderr
    assert _ctl_without_yaml(tmp_path, "--version").stdout.startswith("kuasar-ctl ")


def test_installed_packages_add_their_subcommands() -> None:
    from importlib.metadata import entry_points

    found = entry_points()
    group = found.select(group=ENTRY_POINT_GROUP) if hasattr(found, "select") else found.get(ENTRY_POINT_GROUP, ())
    assert not hasattr(build_parser().parse_args(["pods"]), "run")
    if any(ep.name == "vmm" for ep in group):
        args = build_parser().parse_args(["-s", "vmm", "vm-exec", "--timeout", "3", "pod1", "--", "uname"])
        assert (args.pod, args.cmd, args.timeout) == ("pod1", ["uname"], 3.0)
        assert args.run.__module__ == "kuasar_vmm_sandboxer.ctl"
        assert build_parser().parse_args(["vm-shell", "pod1"]).run.__module__ == "kuasar_vmm_sandboxer.ctl"
    else:
        with pytest.raises(SystemExit):
            build_parser().parse_args(["vm-exec", "pod1", "true"])
