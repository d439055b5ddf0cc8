"""``containerd-shim-kuasar-runc-v1``: lets containerd re-attach to runc pods after its restart."""
from kuasar_shared.shim import shim_main


def main() -> int:
    return shim_main("runc")
