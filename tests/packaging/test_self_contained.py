"""The repository is self-contained: nothing it runs reads from beside the checkout.

A user's clone, a distribution's build root and CI's fresh clone have nothing next to them, so a test,
script or module that refers to a sibling folder (``../shared/...`` climbing out of the repository) or
to the absolute path of a developer's workspace works only on that developer's machine.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

from rpmroot import REPO

# Data recorded elsewhere (its paths are facts of the capture), generated protobuf code, and this file,
# which has to name what it looks for.
_EXEMPT = ("shared/tests/conformance/containerd-", "shared/src/kuasar_shared/api/",
           "tests/packaging/test_self_contained.py")
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
    """Absolute paths that name the checkout's surroundings rather than the machine's system folders."""
    root = REPO.resolve()
    paths = {str(root) + "/", str(root.parent / "shared") + "/"}
    # The workspace this project is developed in; a clone elsewhere must not find it referred to either.
    paths.update({"/work/main/", "/work/shared/"})
    return sorted(paths)


def outside_references(path: Path, text: str) -> list[str]:
    """Each ``line: reference`` of ``text`` (the content of ``path``) that points outside the repository."""
    root = REPO.resolve()
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in _RELATIVE.finditer(line):
            target = (path.parent / (match.group(1) + match.group(2))).resolve()
            if match.group(2) == "shared" and root not in target.parents:
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
    assert outside_references(probe, 'DIR = "../../../shared/conformance"') == ["1: ../../../shared"]
    assert outside_references(probe, 'x = 1\nDIR = "%s/x"' % REPO.resolve()) == ["2: %s/" % REPO.resolve()]
    assert outside_references(probe, 'INPUTS = "/work/shared/conformance/inputs"') == ["1: /work/shared/"]
    # Inside the repository, a relative climb is fine (vmm-task/build-image.sh reaches ../shared/src).
    assert outside_references(REPO / "vmm-task" / "build-image.sh", 'P="$here/../shared/src"') == []
