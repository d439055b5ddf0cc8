#!/rootfs/bin/busybox sh
# Stage 1 of the kuasar guest (the initramfs /init): make /rootfs the root and exec vmm-task, which
# loads the kernel modules itself (kuasar_vmm_task.kmod: one process instead of an insmod per module).
# runc needs pivot_root, which refuses a root on the initramfs mount itself. A bind mount of /rootfs
# is a mount of its own (with the initramfs as its parent), so moving it onto / gives a root that
# pivot_root accepts, without copying the root file system anywhere.
B=/rootfs/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mount --bind /rootfs /rootfs
# keep /dev (Python reads /dev/urandom before the entropy pool is ready), /proc and /sys
for d in dev proc sys; do $B mount --move /$d /rootfs/$d; done
cd /rootfs
$B mount --move . /
exec $B chroot . /sbin/init
