"""Import boundaries, read from the code: layers of kuasar_shared point down, and sandbox types stay apart.

Every module under every package's ``src/`` is parsed (imports inside functions and under
``TYPE_CHECKING`` count as much as those at the top) and the test fails on:

- a module of ``kuasar_shared`` importing one of a higher layer (:data:`LAYERS`, bottom first);
- an import cycle between ``kuasar_shared`` modules through module-level imports;
- ``kuasar_shared`` importing, or naming in a string, a package of a sandbox type;
- a package of one sandbox type importing, or naming in a string, a package of another type.

The generated protobuf modules (``kuasar_shared/api/``) are not read.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set, Tuple

from rpmroot import REPO

#: kuasar_shared from the bottom up: a module may import its own layer and those below. A module belongs
#: to the layer of the longest prefix that names it (``kuasar_shared.daemon.run`` is not ``kuasar_shared.daemon``).
LAYERS: Tuple[Tuple[str, ...], ...] = (
    # plain values and the error tree (and the package itself, which holds only its version)
    ("kuasar_shared", "kuasar_shared.values", "kuasar_shared.errors", "kuasar_shared.api"),
    # small helpers over ids, fds, configuration files, the C programs' fields, logging, sd_notify, signals
    # and the reaper
    ("kuasar_shared.ids", "kuasar_shared.fdio", "kuasar_shared.config", "kuasar_shared.pause",
     "kuasar_shared.native", "kuasar_shared.tracing", "kuasar_shared.callmetrics",
     "kuasar_shared.daemon.log",
     "kuasar_shared.daemon.notify", "kuasar_shared.daemon.signals", "kuasar_shared.daemon.reaper",
     "kuasar_shared.daemon.notls",
     "kuasar_shared.daemon.args"),
    # mechanisms over the kernel and files: mounts, cgroups, processes, durable state, ttrpc, the gRPC server
    ("kuasar_shared.mounts", "kuasar_shared.cgroups", "kuasar_shared.process", "kuasar_shared.process_identity",
     "kuasar_shared.statefiles", "kuasar_shared.ttrpc", "kuasar_shared.grpcserver"),
    # process stdio and the daemon runner (the daemon package re-exports the runner)
    ("kuasar_shared.io", "kuasar_shared.daemon", "kuasar_shared.daemon.run"),
    # the Task API and the generic task-server machinery
    ("kuasar_shared.task",),
    # OCI runtimes (built on task/)
    ("kuasar_shared.oci",),
    # the Sandbox API, pod bookkeeping and the sandboxer's side of the task server
    ("kuasar_shared.sandbox",),
    # what serves both: metrics, health checks, the containerd shim entry point
    ("kuasar_shared.metrics", "kuasar_shared.doctor", "kuasar_shared.shim"),
    # the process mains: the Sandbox API server and the task server
    ("kuasar_shared.sandbox.server", "kuasar_shared.sandbox.upgrade", "kuasar_shared.task.main"),
    # clients and test support, on top of everything
    ("kuasar_shared.ctl", "kuasar_shared.testing"),
)

#: the import name prefix of each sandbox type's packages (a sandboxer and its task server are one type)
SANDBOX_TYPES: Dict[str, str] = {"runc": "kuasar_runc_", "wasm": "kuasar_wasm_", "quark": "kuasar_quark_",
                                 "vmm": "kuasar_vmm_"}
SHARED = "kuasar_shared"
_EXCLUDED = ("kuasar_shared.api",)
_NAMED = re.compile(r"\bkuasar_(runc|wasm|quark|vmm)_\w+")


@dataclass(frozen=True)
class Import:
    """One imported module: the importer, the name, where, and whether it runs when the importer loads."""

    importer: str
    target: str
    line: int
    module_level: bool


@dataclass
class Module:
    name: str
    path: Path
    imports: List[Import]
    #: package names of a sandbox type found in string constants (importlib, ``python -m``)
    named: List[Tuple[str, int]]


def _module_name(src: Path, path: Path) -> Tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(body: Sequence[ast.AST], module_level: bool) -> Iterator[Tuple[ast.AST, bool]]:
    """Every import statement with whether it runs at import time (not in a function or TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, module_level
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from _walk(node.body, False)
        elif isinstance(node, ast.If) and _is_type_checking(node):
            yield from _walk(node.body, False)
            yield from _walk(node.orelse, module_level)
        else:
            yield from _walk(list(ast.iter_child_nodes(node)), module_level)


def read_tree(src_dirs: Iterable[Path]) -> Dict[str, Module]:
    """Every module below each ``src`` directory, with what it imports (relative imports resolved)."""
    paths: Dict[str, Tuple[Path, bool, Path]] = {}
    for src in src_dirs:
        for path in sorted(src.rglob("*.py")):
            name, is_package = _module_name(src, path)
            if not name.startswith(_EXCLUDED):
                paths[name] = (path, is_package, src)
    modules: Dict[str, Module] = {}
    for name, (path, is_package, _src) in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        package = name if is_package else name.rpartition(".")[0]
        imports: List[Import] = []
        for node, module_level in _walk(tree.body, True):
            if isinstance(node, ast.Import):
                imports += [Import(name, alias.name, node.lineno, module_level) for alias in node.names]
                continue
            assert isinstance(node, ast.ImportFrom)
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` imports pkg
                submodule = source + "." + alias.name
                imports.append(Import(name, submodule if submodule in paths else source, node.lineno, module_level))
        named = [(m.group(0), getattr(node, "lineno", 0)) for node in ast.walk(tree)
                 if isinstance(node, ast.Constant) and isinstance(node.value, str)
                 for m in [_NAMED.search(node.value)] if m]
        modules[name] = Module(name, path, imports, named)
    return modules


def layer_of(module: str) -> Optional[int]:
    """The index in :data:`LAYERS` of the longest prefix naming ``module``; None outside kuasar_shared."""
    best: Optional[Tuple[int, int]] = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            # the package itself holds only its version: its name is no prefix of the others
            if module == prefix or (prefix != SHARED and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    return None if best is None else best[1]


def _type_of(module: str) -> Optional[str]:
    for kind, prefix in SANDBOX_TYPES.items():
        if module.startswith(prefix):
            return kind
    return None


def layer_violations(modules: Dict[str, Module]) -> List[str]:
    found = []
    for module in modules.values():
        if not module.name.startswith(SHARED):
            continue
        own = layer_of(module.name)
        if own is None:
            found.append(f"{module.name} is in no layer of LAYERS: place it")
            continue
        for imp in module.imports:
            if not (imp.target == SHARED or imp.target.startswith(SHARED + ".")):
                continue
            target = layer_of(imp.target)
            if target is not None and target > own:
                found.append(f"{module.path}:{imp.line}: {module.name} (layer {own}) imports {imp.target} "
                             f"(layer {target}, higher)")
    return found


def import_cycles(modules: Dict[str, Module]) -> List[List[str]]:
    """Cycles through module-level imports between kuasar_shared modules (each reported once)."""
    graph: Dict[str, Set[str]] = {
        name: {i.target for i in m.imports if i.module_level and i.target in modules and i.target != name
               and i.target.startswith(SHARED)}
        for name, m in modules.items() if name.startswith(SHARED)}
    cycles: List[List[str]] = []
    seen: Set[Tuple[str, ...]] = set()
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):]
                start = cycle.index(min(cycle))
                key = tuple(cycle[start:] + cycle[:start])
                if key not in seen:
                    seen.add(key)
                    cycles.append(list(key) + [key[0]])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def type_violations(modules: Dict[str, Module]) -> List[str]:
    """kuasar_shared naming a sandbox type; a sandbox type naming another (imports and strings)."""
    found = []
    for module in modules.values():
        own = _type_of(module.name)
        if own is None and not module.name.startswith(SHARED):
            continue
        references = [(i.target, i.line, "imports") for i in module.imports] + \
                     [(n, line, "names") for n, line in module.named]
        for target, line, verb in references:
            kind = _type_of(target)
            if kind is not None and kind != own:
                whose = "kuasar_shared" if own is None else f"the {own} sandbox type"
                found.append(f"{module.path}:{line}: {module.name} ({whose}) {verb} {target} ({kind})")
    return found


def _src_dirs(root: Path) -> List[Path]:
    return sorted(p for p in root.glob("*/src") if p.is_dir())


def check(root: Path) -> List[str]:
    modules = read_tree(_src_dirs(root))
    cycles = [" -> ".join(c) for c in import_cycles(modules)]
    return layer_violations(modules) + [f"import cycle: {c}" for c in cycles] + type_violations(modules)


def test_the_tree_keeps_its_import_boundaries() -> None:
    problems = check(REPO)
    assert not problems, "\n".join(problems)


# --- the checker itself, on a synthetic tree ---------------------------------------------------------------

def _write(root: Path, files: Dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


_CLEAN = {
    "shared/src/kuasar_shared/__init__.py": "",
    "shared/src/kuasar_shared/values.py": "",
    "shared/src/kuasar_shared/errors.py": "",
    "shared/src/kuasar_shared/mounts.py": "from kuasar_shared.values import Mount\n",
    "shared/src/kuasar_shared/task/__init__.py": "from .backend import TaskBackend\n",
    "shared/src/kuasar_shared/task/backend.py": "from kuasar_shared import errors\n",
    "shared/src/kuasar_shared/api/x_pb2.py": "import kuasar_shared.sandbox\n",
    "runc-task/src/kuasar_runc_task/main.py": "from kuasar_shared.task import TaskBackend\n",
    "vmm-sandboxer/src/kuasar_vmm_sandboxer/ctl.py": "COMMAND = ['python', '-m', 'kuasar_vmm_task.console']\n",
}


def test_checker_passes_a_clean_tree(tmp_path: Path) -> None:
    assert check(_write(tmp_path, _CLEAN)) == []


def test_checker_finds_a_lower_layer_importing_a_higher_one_even_lazily(tmp_path: Path) -> None:
    tree = _write(tmp_path, {**_CLEAN, "shared/src/kuasar_shared/mounts.py":
                             "def f():\n    from kuasar_shared.task.backend import CreateTask\n"})
    problems = check(tree)
    assert len(problems) == 1 and "kuasar_shared.mounts (layer 2) imports kuasar_shared.task.backend" in problems[0]


def test_checker_finds_an_upward_import_under_type_checking(tmp_path: Path) -> None:
    tree = _write(tmp_path, {**_CLEAN, "shared/src/kuasar_shared/values.py":
                             "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .task import backend\n"})
    assert ["values (layer 0) imports kuasar_shared.task.backend" in p for p in check(tree)] == [True]


def test_checker_finds_a_cycle_of_module_level_imports_only(tmp_path: Path) -> None:
    cycle = {**_CLEAN, "shared/src/kuasar_shared/task/backend.py": "from kuasar_shared.task import records\n",
             "shared/src/kuasar_shared/task/records.py": "import kuasar_shared.task.backend\n"}
    assert check(_write(tmp_path / "a", cycle)) == [
        "import cycle: kuasar_shared.task.backend -> kuasar_shared.task.records -> kuasar_shared.task.backend"]
    lazy = {**cycle, "shared/src/kuasar_shared/task/records.py": "def f():\n    import kuasar_shared.task.backend\n"}
    assert check(_write(tmp_path / "b", lazy)) == []


def test_checker_finds_shared_code_naming_a_sandbox_type(tmp_path: Path) -> None:
    tree = _write(tmp_path, {**_CLEAN, "shared/src/kuasar_shared/errors.py": "import kuasar_wasm_sandboxer\n",
                             "shared/src/kuasar_shared/values.py": "MODULE = 'kuasar_quark_sandboxer.task'\n"})
    problems = check(tree)
    assert len(problems) == 2
    assert "kuasar_shared.errors (kuasar_shared) imports kuasar_wasm_sandboxer (wasm)" in problems[0] + problems[1]
    assert "kuasar_shared.values (kuasar_shared) names kuasar_quark_sandboxer (quark)" in problems[0] + problems[1]


def test_checker_finds_one_sandbox_type_importing_another(tmp_path: Path) -> None:
    tree = _write(tmp_path, {**_CLEAN, "runc-task/src/kuasar_runc_task/main.py":
                             "from kuasar_shared.task import TaskBackend\nfrom kuasar_vmm_task.tasks import X\n"})
    problems = check(tree)
    assert len(problems) == 1 and "(the runc sandbox type) imports kuasar_vmm_task.tasks (vmm)" in problems[0]


def test_checker_finds_a_shared_module_outside_every_layer(tmp_path: Path) -> None:
    tree = _write(tmp_path, {**_CLEAN, "shared/src/kuasar_shared/newthing.py": ""})
    assert check(tree) == ["kuasar_shared.newthing is in no layer of LAYERS: place it"]
