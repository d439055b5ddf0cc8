"""The repository is self-contained: nothing it runs reads from beside the checkout.

A user's clone, a distribution's build root and CI's fresh clone have nothing next to them, so a test,
script or module that climbs out of the repository to a sibling folder, or names the absolute path of the
checkout or of what sits beside it, works only on the machine it was written on. The paths looked for are
derived from where this checkout is, so this file names none of them.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from rpmroot import REPO

# Data recorded elsewhere (its paths are facts of the capture) and generated protobuf code.
_EXEMPT = ("shared/tests/conformance/containerd-", "shared/src/kuasar_shared/api/")
#: the sibling folder a developer's workspace holds beside the checkout
_SIBLING = "shared"
_UP = ".." + "/"
_RELATIVE = re.compile(r"(?<![\w.])((?:\.\./)+)([\w.-]+)")


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    files = []
    for name in names.decode().split("\0"):
        if not name or name.startswith(_EXEMPT):
            continue
        path = REPO / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def _workspace_paths() -> list[str]:
    """The checkout's own absolute path and its sibling's: they exist only where this clone was made."""
    root = REPO.resolve()
    return [str(root) + "/", str(root.parent / _SIBLING) + "/"]


def outside_references(path: Path, text: str) -> list[str]:
    """Each ``line: reference`` of ``text`` (the content of ``path``) that points outside the repository."""
    root = REPO.resolve()
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _RELATIVE.finditer(line):
            target = (path.parent / (match.group(1) + match.group(2))).resolve()
            if match.group(2) == _SIBLING and root not in target.parents:
                found.append("%d: %s" % (number, match.group(0)))
        found.extend("%d: %s" % (number, p) for p in _workspace_paths() if p in line)
    return found


def test_no_file_refers_outside_the_repository() -> None:
    offenders = {}
    for path in _tracked_text_files():
        refs = outside_references(path, path.read_text(encoding="utf-8", errors="replace"))
        if refs:
            offenders[str(path.relative_to(REPO))] = refs
    assert offenders == {}


def test_the_check_catches_both_kinds() -> None:
    probe = REPO / "shared" / "tests" / "probe.py"
    climb = _UP * 3 + _SIBLING
    assert outside_references(probe, 'DIR = "%s/conformance"' % climb) == ["1: " + climb]
    assert outside_references(probe, 'x = 1\nDIR = "%s/x"' % REPO.resolve()) == ["2: %s/" % REPO.resolve()]
    sibling = str(REPO.resolve().parent / _SIBLING)
    assert outside_references(probe, 'INPUTS = "%s/conformance"' % sibling) == ["1: %s/" % sibling]
    # A climb that stays inside the repository is fine (a script in vmm-task/ reaching the shared package).
    assert outside_references(REPO / "vmm-task" / "build-image.sh", 'P="$here/%s%s/src"' % (_UP, _SIBLING)) == []
