"""A restart's downtime is mostly the new sandboxer's imports: it must not load what only the relay process
uses (the relay's task service, stdio and streaming), nor the hypervisor backends it was not configured for."""
import subprocess
import sys


def test_sandboxer_loads_no_relay_server_module():
    code = ("import sys, kuasar_vmm_sandboxer.main, kuasar_vmm_sandboxer.sandboxer; "
            "print(sorted(m for m in sys.modules if m.startswith('kuasar_vmm_sandboxer.relay.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["kuasar_vmm_sandboxer.relay.control", "kuasar_vmm_sandboxer.relay.names"])


def test_config_loads_only_the_configured_backend():
    code = ("import sys; from kuasar_vmm_sandboxer import config; config.parse('[hypervisor]\\ntype = \"qemu\"'); "
            "print(sorted(m for m in sys.modules if m.startswith('kuasar_vmm_sandboxer.hypervisors.') "
            "and m.count('.') == 2 and not m.rsplit('.', 1)[1].startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(["kuasar_vmm_sandboxer.hypervisors.qemu"])


def test_metrics_and_tracing_are_imported_only_when_asked_for():
    code = ("import sys, kuasar_vmm_sandboxer.main; "
            "print(sorted(m for m in ('prometheus_client', 'opentelemetry') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
