"""The Cloud Hypervisor backend (``[hypervisor] type = "cloud-hypervisor"``), after upstream Kuasar's
``cloud_hypervisor/``: argv from device dataclasses, the REST API on ``--api-socket``, the guest agent over
hybrid vsock. Tested against a fake binary only (no Cloud Hypervisor here)."""
from kuasar_vmm_sandboxer.hypervisors import Backend
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.config import CloudHypervisorConfig
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.factory import CloudHypervisorFactory
from kuasar_vmm_sandboxer.hypervisors.cloud_hypervisor.vm import CloudHypervisorVM
from kuasar_vmm_sandboxer.vm import PodResourceHooks

__all__ = ["BACKEND", "CloudHypervisorConfig", "CloudHypervisorVM", "CloudHypervisorFactory"]

BACKEND = Backend(name="cloud-hypervisor", config=CloudHypervisorConfig, factory=CloudHypervisorFactory,
                  hooks=PodResourceHooks)
