"""`mypy --strict` over every package's src/, as the tox `typecheck` env runs it, so the README's test command holds
the type check too. The command is read from tox.ini: one definition, not two."""
from __future__ import annotations

import configparser
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def typecheck_argv() -> list[str]:
    """tox's `typecheck` command with its `python` replaced by this interpreter (the venv with every package)."""
    tox = configparser.RawConfigParser()
    tox.read(REPO / "tox.ini")
    command = tox.get("testenv:typecheck", "commands").replace("\\\n", " ")
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "mypy"], "tox.ini [testenv:typecheck] must run python -m mypy: %r" % argv
    return [sys.executable, *argv[1:]]


def test_typecheck_covers_every_package() -> None:
    checked = {a for a in typecheck_argv() if "/src/" in a}
    packages = {str(p.relative_to(REPO)) for p in REPO.glob("*/src/kuasar_*") if (p / "__init__.py").exists()}
    assert checked == packages, "tox.ini typecheck misses %s / names unknown %s" % (packages - checked,
                                                                                       checked - packages)


def test_every_package_type_checks_strict(tmp_path: Path) -> None:
    argv = typecheck_argv()
    done = subprocess.run([*argv, "--cache-dir", str(tmp_path / "mypy-cache")], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, "mypy --strict found errors:\n" + done.stdout + done.stderr
