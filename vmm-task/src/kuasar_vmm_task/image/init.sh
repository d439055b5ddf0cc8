#!/rootfs/bin/busybox sh
# Stage 1 of the kuasar guest (the initramfs /init): load the kernel modules the guest needs, in
# dependency order, then make /rootfs the root and exec vmm-task.
# The modules only containers use (modules.later) are loaded by a background subshell at the
# lowest priority, beside vmm-task's start-up: on one emulated vCPU they then take the time the agent
# spends waiting for its host, not boot time (vmm-task waits for them before its first container). A
# template VM loads them before vmm-task, so that no VM restored from it has that work left to do.
# runc needs pivot_root, which refuses a root on the initramfs mount itself. A bind mount of /rootfs
# is a mount of its own (with the initramfs as its parent), so moving it onto / gives a root that
# pivot_root accepts, without copying the root file system anywhere.
B=/rootfs/bin/busybox
load() {
    while read -r m; do
        # module parameters on the kernel command line (e.g. virtio_mmio.device= that QEMU's microvm
        # appends) reach built-in drivers only; passing them is modprobe's job, so do it for insmod
        name=${m%.ko}
        args=""
        for word in $cmdline; do
            case "$word" in "$name".*=*) args="$args ${word#"$name".}" ;; esac
        done
        # shellcheck disable=SC2086 # args is a list of parameters
        $B insmod "/modules/$m" $args || echo "kuasar-init: insmod $m failed" >&2
    done <"$1"
}
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
cmdline=$($B cat /proc/cmdline)
load /modules.order
case " $cmdline " in
*" task.template "*)
    load /modules.later
    $B rm -rf /modules /modules.order /modules.later
    ;;
*)
    # a subshell keeps the initramfs root as its own: /modules stays reachable after the move below
    (load /modules.later; $B rm -rf /modules /modules.order /modules.later) &
    $B renice -n 19 -p $! >/dev/null
    ;;
esac
echo "kuasar-init: modules loaded" >/dev/kmsg
$B mount --bind /rootfs /rootfs
# keep /dev (Python reads /dev/urandom before the entropy pool is ready), /proc and /sys
for d in dev proc sys; do $B mount --move /$d /rootfs/$d; done
cd /rootfs
$B mount --move . /
exec $B chroot . /sbin/init
