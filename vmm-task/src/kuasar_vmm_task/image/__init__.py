"""The guest image builder (runs on the host, stdlib only): ``vmm-task/build-image.sh <outdir>``.

It is part of the vmm-task project because the image exists to boot vmm-task, but it is never copied
into the guest. :mod:`.debs` fetches Debian packages, :mod:`.kernel` turns the distribution kernel into
a PVH-bootable vmlinux plus its module load order, :mod:`.elf` resolves shared libraries,
:mod:`.cpio` writes the initramfs, and :mod:`.build` puts them together with a cache stamp.
"""
