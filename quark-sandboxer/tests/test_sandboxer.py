"""QuarkSandboxer on real runsc: lifecycle, bad input, recovery after a restart, corrupt state."""
from __future__ import annotations

import os

import pytest

from kuasar_shared.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from kuasar_shared.process_identity import start_time
from kuasar_shared.sandbox import CreateSandbox

from kuasar_quark_sandboxer.config import RunscConfig
from kuasar_quark_sandboxer.kernels.runsc import RunscKernel
from kuasar_quark_sandboxer.sandboxer import QuarkSandboxer


async def test_lifecycle_and_bad_input(runsc_pods, pod) -> None:
    status = await runsc_pods.status(pod)
    assert status.ready and status.pid > 0 and status.info["kernel"] == "runsc"
    assert "runsc-sandbox" in open(f"/proc/{status.pid}/cmdline", "rb").read().decode(errors="replace")
    with pytest.raises(AlreadyExists):
        await runsc_pods.create(CreateSandbox(id=pod))
    with pytest.raises(FailedPrecondition):
        await runsc_pods.start(pod)
    with pytest.raises(InvalidArgument):
        await runsc_pods.create(CreateSandbox(id="p2", netns_path="/nonexistent/netns"))
    await runsc_pods.stop(pod, None)
    assert (await runsc_pods.wait(pod)).exit_status == 0
    assert start_time(status.pid) is None
    await runsc_pods.shutdown(pod)
    with pytest.raises(NotFound):
        await runsc_pods.status(pod)
    assert not os.path.exists(os.path.join(runsc_pods.directory, pod))


async def test_recovery_keeps_live_pods_and_cleans_the_rest(runsc_pods, pod) -> None:
    directory = runsc_pods.directory
    pid = (await runsc_pods.status(pod)).pid
    os.makedirs(os.path.join(directory, "torn"))
    with open(os.path.join(directory, "torn", "sandbox.json"), "w") as handle:
        handle.write("{torn")
    await runsc_pods.close()  # the sandboxer "dies"; the sandbox keeps running

    second = QuarkSandboxer(directory, RunscKernel(directory, RunscConfig()), None)
    await second.recover()
    try:
        status = await second.status(pod)
        assert status.ready and status.pid == pid
        assert not os.path.exists(os.path.join(directory, "torn"))
        await second.shutdown(pod)
        assert start_time(pid) is None
    finally:
        await second.close()
    for pod_record in list(runsc_pods.pods):
        runsc_pods.pods.forget(pod_record.id)


async def test_host_network_pod_uses_the_node_network(runsc_pods) -> None:
    """critest HostNetwork / portforward in host network: the sandbox stays in the node's network
    namespace and gVisor uses the host's network stack; a pod without network gets none."""
    host = CreateSandbox(id="hostnet-pod", config={"linux": {"security_context": {
        "namespace_options": {"network": "NODE"}}}})
    await runsc_pods.create(host)
    status = await runsc_pods.start(host.id)
    assert os.readlink(f"/proc/{status.pid}/ns/net") == os.readlink("/proc/self/ns/net")
    assert "--network=host" in runsc_pods.pods.get(host.id).runtime.global_args
    await runsc_pods.create(CreateSandbox(id="nonet-pod"))
    status = await runsc_pods.start("nonet-pod")
    assert os.readlink(f"/proc/{status.pid}/ns/net") != os.readlink("/proc/self/ns/net")
    assert "--network=none" in runsc_pods.pods.get("nonet-pod").runtime.global_args
