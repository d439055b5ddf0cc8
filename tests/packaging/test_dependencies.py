"""Each package declares exactly the distributions its code imports: none missing (an install would fail
at run time), none unused (a host would install what nothing loads). Read from the source with ``ast``:
every ``import`` (lazy ones inside functions too) against ``dependencies`` plus the optional extras, and
a sibling package started as a process (``python -m kuasar_<x>.main``) counts as used, and so does a
package located without importing it (``find_spec("wasmtime")``: the wasm runner loads the wheel's C library)."""
from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
PROJECTS = sorted(p.parent.name for p in REPO.glob("*/pyproject.toml"))
#: the import packages of this repository, so that a string such as "kuasar_runc_task.main" reads as a use
OURS = {p.name for p in REPO.glob("*/src/kuasar_*") if p.is_dir() and not p.name.endswith(".egg-info")}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    return _normal(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def declared(project: str) -> set[str]:
    meta = tomllib.loads((REPO / project / "pyproject.toml").read_text())["project"]
    requirements = list(meta.get("dependencies", []))
    for extra in meta.get("optional-dependencies", {}).values():
        requirements += extra
    return {_requirement_name(r) for r in requirements}


def imported(project: str) -> dict[str, set[str]]:
    """Top-level name of every non-stdlib module the project's code imports or runs -> files doing it."""
    src = REPO / project / "src"
    own = {p.name for p in src.iterdir() if p.is_dir() and not p.name.endswith(".egg-info")}
    found: dict[str, set[str]] = {}
    for path in src.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == \
                    "find_spec" and node.args and isinstance(node.args[0], ast.Constant) and \
                    isinstance(node.args[0].value, str):
                names = [node.args[0].value]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    node.value.split(".")[0] in OURS and node.value.replace(".", "").isidentifier():
                names = [node.value]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in own and top != "__future__":
                    found.setdefault(top, set()).add(str(path.relative_to(src)))
    return found


def _candidates(top: str) -> set[str]:
    """The distributions that can provide the top-level module ``top`` (several for a namespace such as
    ``google``); its own name when nothing installed here provides it (``tomli`` on Python >= 3.11)."""
    return {_normal(d) for d in packages_distributions().get(top, [top])}


@pytest.mark.parametrize("project", PROJECTS)
def test_runtime_dependencies_are_what_the_code_imports(project: str) -> None:
    wanted = declared(project)
    uses = {top: _candidates(top) for top in imported(project)}
    missing = {top: sorted(files) for top, files in imported(project).items() if not uses[top] & wanted}
    unused = sorted(d for d in wanted if not any(d in c for c in uses.values()))
    assert not missing, f"{project} imports these without declaring them: {missing}"
    assert not unused, f"{project} declares what none of its code imports: {unused}"
