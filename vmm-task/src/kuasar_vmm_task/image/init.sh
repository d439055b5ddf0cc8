#!/rootfs/bin/busybox sh
# Stage 1 of the kuasar guest (the initramfs /init): make /rootfs the root and exec vmm-task, which
# loads the kernel modules itself (kuasar_vmm_task.kmod: one process instead of an insmod per module).
# runc needs pivot_root, which refuses a root on the initramfs mount itself. A bind mount of /rootfs
# is a mount of its own (with the initramfs as its parent), so moving it onto / gives a root that
# pivot_root accepts, without copying the root file system anywhere.
# One `mount -a` over /fstab (in its order: /proc, /sys, /dev, the bind of /rootfs, and /dev, /proc, /sys
# moved into it; /dev kept because Python reads /dev/urandom before the entropy pool is ready) instead of a
# busybox exec per mount: each exec costs ~10 ms of boot under TCG.
B=/rootfs/bin/busybox
$B mount -a -T /fstab
cd /rootfs
$B mount --move . /
exec $B chroot . /sbin/init
