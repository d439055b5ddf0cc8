"""The relay is one resident process for every vmm pod: it must not carry the sandboxer's gRPC
server or pyroute2 (22 MiB of PSS when it did)."""
import subprocess
import sys


def test_relay_loads_neither_grpc_nor_pyroute2():
    code = ("import sys, kuasar_vmm_sandboxer.relay.main; "
            "print(sorted(m for m in ('grpc', 'pyroute2') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
