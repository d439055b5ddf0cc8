"""The guest has python3 + protobuf only: vmm-task must import with grpc, yaml and pyroute2 absent."""
import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grpc", "yaml", "pyroute2", "daemon", "tomli"):
            raise ImportError("not in the guest: " + name)
sys.meta_path.insert(0, Block())
import kuasar_vmm_task.main, kuasar_shared.ttrpc.mux
print("ok")
"""


def test_agent_imports_without_host_only_dependencies():
    out = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
