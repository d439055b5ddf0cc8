"""quark-task serves only the Task API: loading the Sandbox API's gRPC server there cost memory in
the one process every quark pod shares."""
import subprocess
import sys


def test_task_server_does_not_load_grpc():
    code = "import sys, kuasar_quark_sandboxer.task; print('grpc' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
