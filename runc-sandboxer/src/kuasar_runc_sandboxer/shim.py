"""``containerd-shim-kuasar-runc-v1``: lets containerd re-attach to runc pods after its restart, and
tells it what runc supports (``-info`` reports ``runc features``, as containerd's runc shim does)."""
from kuasar_shared.shim import shim_main


def main() -> int:
    return shim_main("runc", runtime="runc")
