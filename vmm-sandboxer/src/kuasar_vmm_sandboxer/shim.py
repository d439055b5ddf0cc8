"""``containerd-shim-kuasar-vmm-v1``: lets containerd re-attach to vmm pods after its restart."""
from kuasar_shared.shim import shim_main


def main() -> int:
    return shim_main("vmm")
