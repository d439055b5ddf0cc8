#!/rootfs/bin/busybox sh
# Stage 1 of the kuasar guest (the initramfs /init): load the kernel modules the guest needs, in
# dependency order, then move the root filesystem onto a tmpfs and switch_root to vmm-task.
# runc needs pivot_root, which the initramfs root itself cannot do; a tmpfs root can.
B=/rootfs/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
while read -r m; do
    $B insmod "/modules/$m" || echo "kuasar-init: insmod $m failed" >/dev/kmsg
done </modules.order
echo "kuasar-init: modules loaded" >/dev/kmsg
$B mount -t tmpfs -o mode=0755 root /newroot
$B cp -a /rootfs/. /newroot/
echo "kuasar-init: root filesystem copied" >/dev/kmsg
# keep /dev (Python reads /dev/urandom before the entropy pool is ready), /proc and /sys
for d in dev proc sys; do $B mount --move /$d /newroot/$d; done
exec $B switch_root /newroot /sbin/init
