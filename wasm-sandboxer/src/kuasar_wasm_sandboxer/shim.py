"""``containerd-shim-kuasar-wasm-v1``: lets containerd re-attach to wasm pods after its restart."""
from kuasar_shared.shim import shim_main


def main() -> int:
    return shim_main("wasm")
