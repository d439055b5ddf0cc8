"""kernel: vmlinux out of a bzImage payload; module load order from .modinfo depends."""
import lzma

import pytest

from kuasar_vmm_task.image.kernel import ImageError, builtin_modules, extract_vmlinux, load_order, module_index


def test_extract_xz_payload_after_noise():
    elf = b"\x7fELF" + b"\x02\x01" + b"k" * 1000
    payload = lzma.compress(elf, format=lzma.FORMAT_XZ)
    fake = b"MZ" + b"\xfd7zXZ\x00garbage" + b"\0" * 100 + payload + b"trailer"
    assert extract_vmlinux(fake) == elf


def test_extract_fails_clearly():
    with pytest.raises(ImageError, match="ELF"):
        extract_vmlinux(b"no kernel here" + lzma.compress(b"not elf", format=lzma.FORMAT_XZ))


def _ko(path, depends):
    path.write_bytes(b"\x7fELF junk\0license=GPL\0depends=" + depends.encode() + b"\0vermagic=6.1\0")


def test_dependencies_first_and_builtins_skipped(tmp_path):
    kdir = tmp_path / "kernel" / "drivers"
    kdir.mkdir(parents=True)
    _ko(kdir / "virtio_ring.ko", "")
    _ko(kdir / "virtio.ko", "virtio_ring")
    _ko(kdir / "virtio_pci.ko", "virtio,virtio_ring,virtio_pci_modern_dev")
    _ko(kdir / "virtio_pci_modern_dev.ko", "virtio")
    _ko(kdir / "9pnet_virtio.ko", "9pnet,virtio_ring,virtio")
    _ko(kdir / "9pnet.ko", "")
    (tmp_path / "modules.builtin").write_text("kernel/fs/netfs/netfs.ko\n")
    index = module_index(str(tmp_path / "kernel"))
    order = [p.rsplit("/", 1)[1] for p in load_order(["virtio_pci", "9pnet_virtio", "netfs"], index,
                                                     builtin_modules(str(tmp_path)))]
    assert order == ["virtio_ring.ko", "virtio.ko", "virtio_pci_modern_dev.ko", "virtio_pci.ko", "9pnet.ko",
                     "9pnet_virtio.ko"]
    with pytest.raises(ImageError, match="overlay"):
        load_order(["overlay"], index)
