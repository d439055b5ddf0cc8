"""``containerd-shim-kuasar-quark-v1``: lets containerd re-attach to quark pods after its restart."""
from kuasar_shared.shim import shim_main


def main() -> int:
    return shim_main("quark")
