"""The relay is one resident process for every vmm pod: it must not carry the sandboxer's gRPC
server or pyroute2 (22 MiB of PSS when it did)."""
import subprocess
import sys


def test_relay_loads_neither_grpc_nor_pyroute2():
    code = ("import sys, kuasar_vmm_sandboxer.relay.main; "
            "print(sorted(m for m in ('grpc', 'pyroute2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_relay_modules_import_no_loop():
    """Read from the source (lazy and TYPE_CHECKING imports count): no relay module imports itself back."""
    import ast
    from pathlib import Path

    import kuasar_vmm_sandboxer.relay as relay

    package = relay.__name__
    graph = {}
    for path in Path(relay.__file__).parent.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(package + "."):
                imported.add(node.module.rsplit(".", 1)[1])
        graph[path.stem] = imported

    def reaches(start, goal, seen):
        return any(m == goal or (m not in seen and reaches(m, goal, seen | {m})) for m in graph.get(start, ()))
    assert {"link", "server", "forward"} <= set(graph)
    assert [m for m in graph if reaches(m, m, {m})] == []
