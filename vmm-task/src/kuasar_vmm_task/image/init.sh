#!/rootfs/bin/busybox sh
# Stage 1 of the kuasar guest (the initramfs /init): load the kernel modules the guest needs, in
# dependency order, then make /rootfs the root and exec vmm-task.
# runc needs pivot_root, which refuses a root on the initramfs mount itself. A bind mount of /rootfs
# is a mount of its own (with the initramfs as its parent), so moving it onto / gives a root that
# pivot_root accepts, without copying the root file system anywhere.
B=/rootfs/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
cmdline=$($B cat /proc/cmdline)
while read -r m; do
    # module parameters on the kernel command line (e.g. virtio_mmio.device= that QEMU's microvm
    # appends) reach built-in drivers only; passing them is modprobe's job, so do it for insmod
    name=${m%.ko}
    args=""
    for word in $cmdline; do
        case "$word" in "$name".*=*) args="$args ${word#"$name".}" ;; esac
    done
    # shellcheck disable=SC2086 # args is a list of parameters
    $B insmod "/modules/$m" $args || echo "kuasar-init: insmod $m failed" >/dev/kmsg
done </modules.order
echo "kuasar-init: modules loaded" >/dev/kmsg
$B rm -rf /modules /modules.order
$B mount --bind /rootfs /rootfs
# keep /dev (Python reads /dev/urandom before the entropy pool is ready), /proc and /sys
for d in dev proc sys; do $B mount --move /$d /rootfs/$d; done
cd /rootfs
$B mount --move . /
exec $B chroot . /sbin/init
